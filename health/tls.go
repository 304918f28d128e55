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

// watched is a value loaded from files and reloaded when they change: at
// most once a second, Get looks at the files' size and modification time
// and, when either changed, loads them again. A change that does not load
// keeps the previous value and is logged once, so a half-copied file never
// takes the API down.
type watched[T any] struct {
	paths []string
	what  string
	load  func() (T, error)
	log   *zap.Logger
	now   func() time.Time

	mu        sync.Mutex
	value     T
	stamp     string
	checkedAt time.Time
}

func newWatched[T any](what string, paths []string, load func() (T, error), log *zap.Logger) (*watched[T], error) {
	if log == nil {
		log = zap.NewNop()
	}
	w := &watched[T]{paths: paths, what: what, load: load, log: log, now: time.Now}
	stamp, err := fileStamp(paths...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	v, err := load()
	if err != nil {
		return nil, err
	}
	w.value, w.stamp, w.checkedAt = v, stamp, w.now()
	return w, nil
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

// Get returns the value, reloading it first when the files changed.
func (w *watched[T]) Get() T {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.now().Sub(w.checkedAt) < reloadCheckEvery {
		return w.value
	}
	w.checkedAt = w.now()
	stamp, err := fileStamp(w.paths...)
	if err != nil || stamp == w.stamp {
		return w.value
	}
	// Whatever happens, this version of the files has been tried: a broken
	// one is not retried on every handshake.
	w.stamp = stamp
	v, err := w.load()
	if err != nil {
		w.log.Warn("rotated "+w.what+" not loaded, keeping the previous one", zap.Error(err))
		return w.value
	}
	w.value = v
	w.log.Info(w.what+" reloaded", zap.Strings("files", w.paths))
	return w.value
}

// CertFiles serves a certificate and key from files and picks up rotated
// files without a restart (see watched).
type CertFiles struct{ w *watched[*tls.Certificate] }

// NewCertFiles loads the pair once; an error names the file that failed.
func NewCertFiles(certFile, keyFile string, log *zap.Logger) (*CertFiles, error) {
	w, err := newWatched("certificate", []string{certFile, keyFile}, func() (*tls.Certificate, error) {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("certificate %s / key %s: %w", certFile, keyFile, err)
		}
		return &pair, nil
	}, log)
	if err != nil {
		return nil, err
	}
	return &CertFiles{w}, nil
}

// Current returns the certificate, reloading it first when the files changed.
func (c *CertFiles) Current() *tls.Certificate { return c.w.Get() }

// CAFile is a CA bundle reloaded like CertFiles.
type CAFile struct{ w *watched[*x509.CertPool] }

// NewCAFile loads a PEM bundle; it fails when the file holds no certificate.
func NewCAFile(path string, log *zap.Logger) (*CAFile, error) {
	w, err := newWatched("CA file", []string{path}, func() (*x509.CertPool, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", path)
		}
		return pool, nil
	}, log)
	if err != nil {
		return nil, err
	}
	return &CAFile{w}, nil
}

// Pool returns the CA pool, reloading the file first when it changed.
func (c *CAFile) Pool() *x509.CertPool { return c.w.Get() }

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
