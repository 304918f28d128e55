package testbed

import (
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/health"
	"github.com/pgmesh/pgmesh/internal/certgen"
)

// APITLS is a private CA and a certificate for the agents' REST APIs (and
// for their clients: peers, HAProxy, the CLI, Consul's checks), in a
// directory the PostgreSQL OS user owns, as production keeps them.
type APITLS struct {
	Dir    string
	CA     *certgen.CA
	CAFile string
	// CertFile/KeyFile: a certificate for 127.0.0.1 and localhost, good for
	// server and client authentication. PEMFile is both in one file (the
	// form HAProxy's crt takes).
	CertFile, KeyFile, PEMFile string
	// VerifyClient is restapi.verify_client for agents using this.
	VerifyClient string
	t            testing.TB
}

// NewAPITLS makes the CA and the certificate.
func NewAPITLS(t testing.TB, verifyClient string) *APITLS {
	t.Helper()
	ca, err := certgen.NewCA("pgmesh test REST API CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a := &APITLS{Dir: OwnedDir(t), CA: ca, VerifyClient: verifyClient, t: t}
	a.CAFile = filepath.Join(a.Dir, "ca.crt")
	if err := os.WriteFile(a.CAFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	a.Issue("member")
	return a
}

// Issue writes a fresh certificate under name (member = the one agents
// use; issuing it again is a rotation) and returns its serial number.
func (a *APITLS) Issue(name string) string {
	a.t.Helper()
	p, err := a.CA.Issue("pgmesh "+name, []string{"127.0.0.1", "localhost"}, 24*time.Hour)
	if err != nil {
		a.t.Fatal(err)
	}
	certFile, keyFile, err := p.WriteFiles(a.Dir, name)
	if err != nil {
		a.t.Fatal(err)
	}
	u, err := PostgresOSUser()
	if err != nil {
		a.t.Fatal(err)
	}
	if u != nil {
		for _, f := range []string{certFile, keyFile, filepath.Join(a.Dir, name+".pem")} {
			if err := os.Chown(f, int(u.UID), int(u.GID)); err != nil {
				a.t.Fatal(err)
			}
		}
	}
	if name == "member" {
		a.CertFile, a.KeyFile, a.PEMFile = certFile, keyFile, filepath.Join(a.Dir, name+".pem")
	}
	return p.Serial.String()
}

// RestAPIYAML is the restapi: settings that turn HTTPS on.
func (a *APITLS) RestAPIYAML() string {
	return "certfile: " + a.CertFile + "\nkeyfile: " + a.KeyFile + "\ncafile: " + a.CAFile + "\nverify_client: " + a.VerifyClient
}

// TLSConfig is a client configuration that trusts the CA and shows the
// member certificate.
func (a *APITLS) TLSConfig() *tls.Config {
	a.t.Helper()
	ct, err := health.NewClientTLS(health.ClientTLSOptions{CAFile: a.CAFile, CertFile: a.CertFile, KeyFile: a.KeyFile}, nil)
	if err != nil {
		a.t.Fatal(err)
	}
	return ct.Config()
}

// Client is an HTTPS client for the agents' REST APIs.
func (a *APITLS) Client(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: a.TLSConfig(), DisableKeepAlives: true}}
}
