package health

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/certgen"
)

type tlsFiles struct {
	dir                   string
	ca                    *certgen.CA
	caFile                string
	serverCert, serverKey string
	clientCert, clientKey string
	serverSerial          string
}

func writeTLSFiles(t *testing.T) *tlsFiles {
	t.Helper()
	dir := t.TempDir()
	ca, err := certgen.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &tlsFiles{dir: dir, ca: ca, caFile: filepath.Join(dir, "ca.crt")}
	if err := os.WriteFile(f.caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	f.rotateServer(t)
	cl, err := ca.Issue("operator", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if f.clientCert, f.clientKey, err = cl.WriteFiles(dir, "client"); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *tlsFiles) rotateServer(t *testing.T) {
	t.Helper()
	p, err := f.ca.Issue("member", []string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if f.serverCert, f.serverKey, err = p.WriteFiles(f.dir, "server"); err != nil {
		t.Fatal(err)
	}
	f.serverSerial = p.Serial.String()
}

func startTLSServer(t *testing.T, f *tlsFiles, verify string, o Options) *Server {
	t.Helper()
	fake := &fakeCtl{state: primaryState(), cfg: baseConfig(), cfgIndex: 1}
	o.Listen = "127.0.0.1:0"
	o.TLS = &TLSOptions{CertFile: f.serverCert, KeyFile: f.serverKey, CAFile: f.caFile, VerifyClient: verify}
	s := newTestServer(fake, o)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(t.Context()) })
	return s
}

func tlsClient(t *testing.T, f *tlsFiles, withCert bool) *http.Client {
	t.Helper()
	o := ClientTLSOptions{CAFile: f.caFile}
	if withCert {
		o.CertFile, o.KeyFile = f.clientCert, f.clientKey
	}
	ct, err := NewClientTLS(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: ct.Config(), DisableKeepAlives: true}}
}

func call(t *testing.T, c *http.Client, method, url string) (int, string, *tls.ConnectionState, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.TLS, nil
}

func TestTLSVerifyClientOptional(t *testing.T) {
	f := writeTLSFiles(t)
	s := startTLSServer(t, f, VerifyClientOptional, Options{})
	if s.Scheme() != "https" {
		t.Fatalf("scheme %q", s.Scheme())
	}
	base := "https://" + s.Addr()
	anon, withCert := tlsClient(t, f, false), tlsClient(t, f, true)
	if code, _, _, err := call(t, anon, http.MethodGet, base+"/primary"); err != nil || code != 200 {
		t.Fatalf("GET /primary without a client certificate = %d, %v (health stays open)", code, err)
	}
	code, body, _, err := call(t, anon, http.MethodPost, base+"/reload")
	if err != nil || code != 403 || !strings.Contains(body, "client certificate") {
		t.Fatalf("POST /reload without a client certificate = %d %q %v", code, body, err)
	}
	if code, body, _, err := call(t, withCert, http.MethodPost, base+"/reload"); err != nil || code == 403 || code == 401 {
		t.Fatalf("POST /reload with a client certificate = %d %q %v", code, body, err)
	}
	// Plain HTTP gets nothing useful from an HTTPS listener.
	plain := &http.Client{Timeout: 5 * time.Second}
	if code, _, _, err := call(t, plain, http.MethodGet, "http://"+s.Addr()+"/primary"); err == nil && code == 200 {
		t.Fatal("plain HTTP answered 200 on a TLS listener")
	}
	// Without the CA the server's certificate is not trusted.
	untrusted := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool()}}}
	if _, _, _, err := call(t, untrusted, http.MethodGet, base+"/primary"); err == nil {
		t.Fatal("a client without the CA trusted the server")
	}
}

func TestTLSVerifyClientRequiredWithAuth(t *testing.T) {
	f := writeTLSFiles(t)
	s := startTLSServer(t, f, VerifyClientRequired, Options{Auth: &BasicAuth{Username: "u", Password: "p"}})
	base := "https://" + s.Addr()
	if _, _, _, err := call(t, tlsClient(t, f, false), http.MethodGet, base+"/primary"); err == nil {
		t.Fatal("verify_client required: a client without a certificate got an answer")
	}
	withCert := tlsClient(t, f, true)
	if code, _, _, err := call(t, withCert, http.MethodGet, base+"/primary"); err != nil || code != 200 {
		t.Fatalf("GET /primary with a certificate = %d %v", code, err)
	}
	// A certificate does not replace the password when both are configured.
	if code, _, _, err := call(t, withCert, http.MethodPost, base+"/reload"); err != nil || code != 401 {
		t.Fatalf("POST /reload with a certificate but no password = %d %v, want 401", code, err)
	}
}

func TestTLSCertificateRotation(t *testing.T) {
	f := writeTLSFiles(t)
	s := startTLSServer(t, f, VerifyClientNone, Options{})
	base := "https://" + s.Addr()
	c := tlsClient(t, f, false)
	servedSerial := func() string {
		_, _, cs, err := call(t, c, http.MethodGet, base+"/health")
		if err != nil {
			t.Fatal(err)
		}
		return cs.PeerCertificates[0].SerialNumber.String()
	}
	if got := servedSerial(); got != f.serverSerial {
		t.Fatalf("served serial %s, want %s", got, f.serverSerial)
	}
	old := f.serverSerial
	f.rotateServer(t)
	deadline := time.Now().Add(5 * time.Second)
	for servedSerial() == old {
		if time.Now().After(deadline) {
			t.Fatal("rotated certificate not served within 5s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := servedSerial(); got != f.serverSerial {
		t.Fatalf("after rotation served %s, want %s", got, f.serverSerial)
	}
	// A broken rotation keeps the last good certificate.
	if err := os.WriteFile(f.serverCert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond)
	if got := servedSerial(); got != f.serverSerial {
		t.Fatalf("after a broken rotation served %s, want the last good %s", got, f.serverSerial)
	}
}

func TestTLSStartErrorsNameTheField(t *testing.T) {
	f := writeTLSFiles(t)
	for _, tc := range []struct {
		tls  TLSOptions
		want string
	}{
		{TLSOptions{CertFile: f.serverCert}, "certfile and keyfile"},
		{TLSOptions{CertFile: filepath.Join(f.dir, "nope.crt"), KeyFile: f.serverKey}, "restapi.certfile"},
		{TLSOptions{CertFile: f.serverCert, KeyFile: f.serverKey, CAFile: f.serverKey}, "restapi.cafile"},
		{TLSOptions{CertFile: f.serverCert, KeyFile: f.serverKey, VerifyClient: "sometimes"}, "restapi.verify_client"},
	} {
		tlsOpts := tc.tls
		s := newTestServer(&fakeCtl{state: primaryState(), cfg: baseConfig()}, Options{Listen: "127.0.0.1:0", TLS: &tlsOpts})
		err := s.Start()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: Start() = %v, want an error naming %q", tc.tls, err, tc.want)
		}
		if err == nil {
			_ = s.Shutdown(t.Context())
		}
	}
}
