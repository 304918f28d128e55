package demo

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/pgmesh/pgmesh/health"
	"github.com/pgmesh/pgmesh/internal/certgen"
)

// Secure is what a --secure demo hands its users: the REST APIs speak
// HTTPS with certificates from a private CA made for the demo, mutating
// requests need basic auth or a client certificate
// (verify_client: optional), and Consul checks the APIs with the same CA.
type Secure struct {
	Dir string
	// CAFile signed every certificate; CertFile/KeyFile is a certificate
	// for 127.0.0.1 and localhost used by the agents and usable by clients
	// (PEMFile: both in one file, for HAProxy's crt).
	CAFile, CertFile, KeyFile, PEMFile string
	// Username and Password protect mutating REST requests; the agents read
	// them from UsernameFile/PasswordFile.
	Username, Password         string
	UsernameFile, PasswordFile string
}

const demoAPIUser = "pgmesh-admin"

// setupSecure writes the CA, the certificate and the credentials under
// <workdir>/tls, owned by the OS user the agents run as.
func (m *Mesh) setupSecure() error {
	dir := filepath.Join(m.opts.WorkDir, "tls")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	ca, err := certgen.NewCA("pgmesh demo CA", 30*24*time.Hour)
	if err != nil {
		return fmt.Errorf("demo CA: %w", err)
	}
	s := &Secure{Dir: dir, CAFile: filepath.Join(dir, "ca.crt"), Username: demoAPIUser,
		UsernameFile: filepath.Join(dir, "api-username"), PasswordFile: filepath.Join(dir, "api-password")}
	if err := os.WriteFile(s.CAFile, ca.PEM, 0o644); err != nil {
		return err
	}
	pair, err := ca.Issue("pgmesh demo member", []string{"127.0.0.1", "localhost"}, 30*24*time.Hour)
	if err != nil {
		return fmt.Errorf("demo certificate: %w", err)
	}
	if s.CertFile, s.KeyFile, err = pair.WriteFiles(dir, "member"); err != nil {
		return err
	}
	s.PEMFile = filepath.Join(dir, "member.pem")
	var pw [16]byte
	if _, err := rand.Read(pw[:]); err != nil {
		return err
	}
	s.Password = hex.EncodeToString(pw[:])
	if err := os.WriteFile(s.UsernameFile, []byte(s.Username+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(s.PasswordFile, []byte(s.Password+"\n"), 0o600); err != nil {
		return err
	}
	for _, p := range []string{dir, s.CAFile, s.CertFile, s.KeyFile, s.PEMFile, s.UsernameFile, s.PasswordFile} {
		if err := m.own(p); err != nil {
			return err
		}
	}
	ct, err := health.NewClientTLS(health.ClientTLSOptions{CAFile: s.CAFile}, nil)
	if err != nil {
		return err
	}
	m.apiClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: ct.Config()}}
	m.secure = s
	// Consul verifies the agents' certificates in its HTTP checks.
	m.opts.ConsulExtraHCL += fmt.Sprintf("enable_agent_tls_for_checks = true\ntls {\n  defaults {\n    ca_file = %q\n    cert_file = %q\n    key_file = %q\n  }\n}\n", s.CAFile, s.CertFile, s.KeyFile)
	return nil
}

// Secure returns the demo's TLS and credential files (nil unless the demo
// runs with Options.Secure).
func (m *Mesh) Secure() *Secure { return m.secure }

// APIURL is a member's REST API base URL.
func (m *Mesh) APIURL(mem *Member) string {
	if m.secure != nil {
		return fmt.Sprintf("https://127.0.0.1:%d", mem.APIPort)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", mem.APIPort)
}

// secureAgentYAML is the part of a member's configuration that turns the
// REST API's TLS and credentials on ("" without --secure).
func (m *Mesh) secureAgentYAML() (consul, restapi string) {
	s := m.secure
	if s == nil {
		return "", ""
	}
	consul = "  service_check_tls_server_name: localhost\n"
	restapi = fmt.Sprintf("  certfile: %s\n  keyfile: %s\n  cafile: %s\n  verify_client: optional\n  username_file: %s\n  password_file: %s\n",
		s.CertFile, s.KeyFile, s.CAFile, s.UsernameFile, s.PasswordFile)
	return consul, restapi
}
