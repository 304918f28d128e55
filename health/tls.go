package health

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Client certificate policies of the REST API (restapi.verify_client), as
// Patroni names them.
const (
	// VerifyClientNone asks for no client certificate.
	VerifyClientNone = "none"
	// VerifyClientOptional verifies a certificate when one is sent, and
	// requires one on mutating requests; health checks need none.
	VerifyClientOptional = "optional"
	// VerifyClientRequired refuses the TLS handshake without a valid client
	// certificate, health checks included.
	VerifyClientRequired = "required"
)

// TLSOptions make the REST API speak HTTPS.
type TLSOptions struct {
	CertFile string
	KeyFile  string
	// CAFile verifies client certificates (system roots when empty).
	CAFile string
	// VerifyClient is none (default), optional or required.
	VerifyClient string
}

// ValidVerifyClient reports whether v is a known restapi.verify_client value
// ("" means none).
func ValidVerifyClient(v string) bool {
	switch v {
	case "", VerifyClientNone, VerifyClientOptional, VerifyClientRequired:
		return true
	}
	return false
}

// reloadCheckEvery bounds how often the files are looked at: once a second
// is cheap (two stats) and picks a rotated certificate up well before any
// client notices.
const reloadCheckEvery = time.Second

// CertFiles serves a certificate and key from files and picks up rotated
// files without a restart: every handshake may look at the files' size and
// modification time (at most once a second) and reload them when either
// changed. A rotation that does not parse keeps the previous certificate
// and is logged, so a half-copied file never takes the API down.
type CertFiles struct {
	certFile, keyFile string
	log               *zap.Logger
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     string
	checkedAt time.Time
}

// NewCertFiles loads the pair once; an error names the file that failed.
func NewCertFiles(certFile, keyFile string, log *zap.Logger) (*CertFiles, error) {
	if log == nil {
		log = zap.NewNop()
	}
	c := &CertFiles{certFile: certFile, keyFile: keyFile, log: log, now: time.Now}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func fileStamp(paths ...string) (string, error) {
	s := ""
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		s += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return s, nil
}

func (c *CertFiles) load() error {
	stamp, err := fileStamp(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("certificate %s / key %s: %w", c.certFile, c.keyFile, err)
	}
	c.mu.Lock()
	c.cert, c.stamp, c.checkedAt = &pair, stamp, c.now()
	c.mu.Unlock()
	return nil
}

// Current returns the certificate, reloading it first when the files changed.
func (c *CertFiles) Current() *tls.Certificate {
	c.mu.Lock()
	due := c.now().Sub(c.checkedAt) >= reloadCheckEvery
	if due {
		c.checkedAt = c.now()
	}
	cur, old := c.cert, c.stamp
	c.mu.Unlock()
	if !due {
		return cur
	}
	stamp, err := fileStamp(c.certFile, c.keyFile)
	if err != nil || stamp == old {
		return cur
	}
	if err := c.load(); err != nil {
		c.log.Warn("rotated certificate not loaded, keeping the previous one", zap.Error(err))
		c.mu.Lock()
		// Do not retry this same broken pair on every handshake.
		c.stamp = stamp
		c.mu.Unlock()
		return cur
	}
	c.log.Info("certificate reloaded", zap.String("cert_file", c.certFile))
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cert
}

// CAFile is a CA bundle reloaded like CertFiles.
type CAFile struct {
	path string
	log  *zap.Logger
	now  func() time.Time

	mu        sync.Mutex
	pool      *x509.CertPool
	stamp     string
	checkedAt time.Time
}

// NewCAFile loads a PEM bundle; it fails when the file holds no certificate.
func NewCAFile(path string, log *zap.Logger) (*CAFile, error) {
	if log == nil {
		log = zap.NewNop()
	}
	c := &CAFile{path: path, log: log, now: time.Now}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *CAFile) load() error {
	stamp, err := fileStamp(c.path)
	if err != nil {
		return fmt.Errorf("CA file: %w", err)
	}
	b, err := os.ReadFile(c.path)
	if err != nil {
		return fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return fmt.Errorf("CA file %s holds no PEM certificate", c.path)
	}
	c.mu.Lock()
	c.pool, c.stamp, c.checkedAt = pool, stamp, c.now()
	c.mu.Unlock()
	return nil
}

// Pool returns the CA pool, reloading the file first when it changed.
func (c *CAFile) Pool() *x509.CertPool {
	c.mu.Lock()
	due := c.now().Sub(c.checkedAt) >= reloadCheckEvery
	if due {
		c.checkedAt = c.now()
	}
	cur, old := c.pool, c.stamp
	c.mu.Unlock()
	if !due {
		return cur
	}
	if stamp, err := fileStamp(c.path); err != nil || stamp == old {
		return cur
	}
	if err := c.load(); err != nil {
		c.log.Warn("rotated CA file not loaded, keeping the previous one", zap.Error(err))
		return cur
	}
	c.log.Info("CA file reloaded", zap.String("ca_file", c.path))
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pool
}

// ServerTLSConfig is the REST API's TLS configuration: certificates and the
// client CA come from the files on every handshake, so rotation needs no
// restart.
func ServerTLSConfig(o TLSOptions, log *zap.Logger) (*tls.Config, error) {
	if o.CertFile == "" || o.KeyFile == "" {
		return nil, errors.New("restapi TLS needs both certfile and keyfile")
	}
	if !ValidVerifyClient(o.VerifyClient) {
		return nil, fmt.Errorf("restapi.verify_client %q: want none, optional or required", o.VerifyClient)
	}
	certs, err := NewCertFiles(o.CertFile, o.KeyFile, log)
	if err != nil {
		return nil, fmt.Errorf("restapi.certfile: %w", err)
	}
	var cas *CAFile
	if o.CAFile != "" {
		if cas, err = NewCAFile(o.CAFile, log); err != nil {
			return nil, fmt.Errorf("restapi.cafile: %w", err)
		}
	}
	clientAuth := tls.NoClientCert
	switch o.VerifyClient {
	case VerifyClientOptional:
		clientAuth = tls.VerifyClientCertIfGiven
	case VerifyClientRequired:
		clientAuth = tls.RequireAndVerifyClientCert
	}
	base := &tls.Config{MinVersion: tls.VersionTLS12}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{*certs.Current()},
			ClientAuth:   clientAuth,
		}
		if cas != nil {
			c.ClientCAs = cas.Pool()
		}
		return c, nil
	}
	return base, nil
}

// ClientTLSOptions say how a client of the REST API (a peer agent, the
// CLI) checks the agents' certificates and which certificate it shows.
type ClientTLSOptions struct {
	CAFile             string
	CertFile, KeyFile  string
	InsecureSkipVerify bool
}

// ClientTLS hands out client configurations that follow rotated files.
type ClientTLS struct {
	insecure bool
	certs    *CertFiles
	cas      *CAFile
}

// NewClientTLS loads the files once; errors name the file.
func NewClientTLS(o ClientTLSOptions, log *zap.Logger) (*ClientTLS, error) {
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("a client certificate needs both the certificate and the key file")
	}
	c := &ClientTLS{insecure: o.InsecureSkipVerify}
	var err error
	if o.CertFile != "" {
		if c.certs, err = NewCertFiles(o.CertFile, o.KeyFile, log); err != nil {
			return nil, err
		}
	}
	if o.CAFile != "" {
		if c.cas, err = NewCAFile(o.CAFile, log); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Config is a client configuration with the files' current contents; build
// a transport from it per use (or per polling round) to follow rotations.
func (c *ClientTLS) Config() *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.insecure}
	if c.cas != nil {
		cfg.RootCAs = c.cas.Pool()
	}
	if c.certs != nil {
		certs := c.certs
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certs.Current(), nil
		}
	}
	return cfg
}
