package health

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"

	"github.com/pgmesh/pgmesh/consulkv"
)

// configAttempts is how often PATCH/PUT /config re-read and retry after
// losing a CAS race before answering 409.
const configAttempts = 3

func (s *Server) handleGetConfig(w http.ResponseWriter, r *http.Request) {
	cfg, _, err := s.ctl.Config(r.Context())
	if err != nil {
		var de *consulkv.DecodeError
		if errors.As(err, &de) {
			writeText(w, r, http.StatusInternalServerError, "the stored configuration is invalid (replace it with PUT /config): "+err.Error())
			return
		}
		writeText(w, r, http.StatusServiceUnavailable, "cannot read the configuration from Consul: "+err.Error())
		return
	}
	if cfg == nil {
		writeText(w, r, http.StatusNotFound, "no dynamic configuration is stored")
		return
	}
	writeJSON(w, r, http.StatusOK, cfg)
}

// handlePatchConfig applies an RFC 7386 merge patch to the stored config.
// The merge happens on generic JSON so null can delete a key (reset it to
// its default) and nested maps like parameters merge key by key.
func (s *Server) handlePatchConfig(w http.ResponseWriter, r *http.Request) {
	body, code, err := readBody(r)
	if err != nil {
		writeText(w, r, code, err.Error())
		return
	}
	patch, err := decodeObject(body)
	if err != nil {
		writeText(w, r, http.StatusBadRequest, "invalid patch: "+err.Error())
		return
	}
	for range configAttempts {
		cur, index, err := s.ctl.Config(r.Context())
		if err != nil {
			s.configReadError(w, r, err, "PATCH")
			return
		}
		base := map[string]any{}
		if cur != nil {
			if base, err = toObject(cur); err != nil {
				writeText(w, r, http.StatusInternalServerError, "cannot encode the stored configuration: "+err.Error())
				return
			}
		}
		merged, _ := mergePatch(base, patch).(map[string]any)
		cfg, err := configFromObject(merged)
		if err != nil {
			writeText(w, r, http.StatusBadRequest, err.Error())
			return
		}
		if cur != nil && reflect.DeepEqual(*cur, *cfg) {
			writeJSON(w, r, http.StatusOK, cfg)
			return
		}
		if s.casConfig(w, r, cfg, index) {
			return
		}
	}
	writeText(w, r, http.StatusConflict, "the configuration kept changing concurrently; retry")
}

// handlePutConfig replaces the whole config. It still writes with CAS so it
// cannot interleave with a PATCH's read-modify-write.
func (s *Server) handlePutConfig(w http.ResponseWriter, r *http.Request) {
	body, code, err := readBody(r)
	if err != nil {
		writeText(w, r, code, err.Error())
		return
	}
	obj, err := decodeObject(body)
	if err != nil {
		writeText(w, r, http.StatusBadRequest, "invalid configuration: "+err.Error())
		return
	}
	cfg, err := configFromObject(obj)
	if err != nil {
		writeText(w, r, http.StatusBadRequest, err.Error())
		return
	}
	for range configAttempts {
		_, index, err := s.ctl.Config(r.Context())
		var de *consulkv.DecodeError
		if err != nil && !errors.As(err, &de) {
			// An invalid stored value is exactly what PUT may replace; its
			// index comes with the DecodeError.
			s.configReadError(w, r, err, "PUT")
			return
		}
		if s.casConfig(w, r, cfg, index) {
			return
		}
	}
	writeText(w, r, http.StatusConflict, "the configuration kept changing concurrently; retry")
}

// casConfig writes cfg at index and answers unless the CAS lost a race.
func (s *Server) casConfig(w http.ResponseWriter, r *http.Request, cfg *consulkv.ClusterConfig, index uint64) (done bool) {
	ok, err := s.ctl.CASConfig(r.Context(), cfg, index)
	var unsafe *consulkv.UnsafeConfigError
	if errors.As(err, &unsafe) {
		writeText(w, r, http.StatusBadRequest, "refusing an unsafe configuration, nothing written: "+unsafe.Error())
		return true
	}
	if err != nil {
		writeText(w, r, http.StatusServiceUnavailable, "cannot write the configuration to Consul: "+err.Error())
		return true
	}
	if !ok {
		return false
	}
	// Every agent applies config at its next loop; waking ours makes the
	// change visible here at once.
	s.ctl.Wake()
	writeJSON(w, r, http.StatusOK, cfg)
	return true
}

func (s *Server) configReadError(w http.ResponseWriter, r *http.Request, err error, method string) {
	var de *consulkv.DecodeError
	if errors.As(err, &de) {
		// A patch needs a readable base; guessing one would silently drop
		// whatever the unreadable value held.
		writeText(w, r, http.StatusConflict, "the stored configuration is invalid, so it cannot be patched; replace it with PUT /config: "+err.Error())
		return
	}
	writeText(w, r, http.StatusServiceUnavailable, "cannot read the configuration from Consul: "+err.Error())
}

// readBody reads the (size-capped) request body; the int is the status to
// answer on error.
func readBody(r *http.Request) ([]byte, int, error) {
	if r.Body == nil {
		return nil, 0, nil
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", mbe.Limit)
		}
		return nil, http.StatusBadRequest, fmt.Errorf("cannot read request body: %v", err)
	}
	return b, 0, nil
}

// decodeObject parses a JSON object keeping numbers exact: a uint64 such as
// maximum_lag_on_failover must not pass through float64.
func decodeObject(b []byte) (map[string]any, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errors.New("empty body, expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON value")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		// RFC 7386 would let a non-object replace the whole document; for
		// the cluster's config that is never what an operator meant.
		return nil, errors.New("expected a JSON object")
	}
	return obj, nil
}

func toObject(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return decodeObject(b)
}

// mergePatch is RFC 7386 MergePatch(target, patch).
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergePatch(t[k], v)
	}
	return t
}

// configFromObject turns a JSON object into a validated ClusterConfig.
// Unknown fields are rejected: the typed config would drop them, and a
// setting that silently does nothing (e.g. Patroni's postgresql.parameters
// layout) is worse than an error.
func configFromObject(obj map[string]any) (*consulkv.ClusterConfig, error) {
	if obj == nil {
		obj = map[string]any{}
	}
	// Patroni configs write parameter values as numbers and booleans;
	// PostgreSQL takes them all as strings.
	if params, ok := obj["parameters"].(map[string]any); ok {
		for k, v := range params {
			switch v := v.(type) {
			case json.Number:
				params[k] = v.String()
			case bool:
				params[k] = map[bool]string{true: "on", false: "off"}[v]
			}
		}
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("invalid configuration: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	cfg := &consulkv.ClusterConfig{}
	if err := dec.Decode(cfg); err != nil {
		return nil, fmt.Errorf("invalid configuration: %v", err)
	}
	if cfg.Version == 0 {
		// The schema version is pgmesh's business; deleting it with null
		// means "current", not "invalid".
		cfg.Version = consulkv.ValueVersion
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %v", err)
	}
	return cfg, nil
}
