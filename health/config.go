package health

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"time"

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
	s.writeConfig(w, r, cfg)
}

// writeConfig answers with the configuration in Patroni's shape.
func (s *Server) writeConfig(w http.ResponseWriter, r *http.Request, cfg *consulkv.ClusterConfig) {
	obj, err := PatroniConfig(cfg)
	if err != nil {
		writeText(w, r, http.StatusInternalServerError, "cannot encode the configuration: "+err.Error())
		return
	}
	writeJSON(w, r, http.StatusOK, obj)
}

// durationKeys are the configuration's durations: numbers of seconds in
// Patroni's shape (strings such as "10s" are accepted on input too).
var durationKeys = []string{"ttl", "loop_wait", "retry_timeout", "lock_delay", "primary_start_timeout"}

// PatroniConfig is cfg as Patroni's GET /config shows a dynamic
// configuration: durations as numbers of seconds and the PostgreSQL
// parameters under postgresql.parameters, with use_pg_rewind and use_slots
// (pgmesh always rewinds and always uses slots).
func PatroniConfig(cfg *consulkv.ClusterConfig) (map[string]any, error) {
	obj, err := toObject(cfg)
	if err != nil {
		return nil, err
	}
	for _, k := range durationKeys {
		v, ok := obj[k].(string)
		if !ok {
			continue
		}
		var d consulkv.Duration
		if err := d.Set(v); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		obj[k] = secondsNumber(d.D())
	}
	pgSection := map[string]any{"use_pg_rewind": true, "use_slots": true, "parameters": map[string]any{}}
	if p, ok := obj["parameters"]; ok {
		pgSection["parameters"] = p
		delete(obj, "parameters")
	}
	obj["postgresql"] = pgSection
	return obj, nil
}

// secondsNumber is d in seconds as a JSON number: an integer when whole.
func secondsNumber(d time.Duration) json.Number {
	if d%time.Second == 0 {
		return json.Number(strconv.FormatInt(int64(d/time.Second), 10))
	}
	return json.Number(strconv.FormatFloat(d.Seconds(), 'f', -1, 64))
}

// toPatroniShape moves a top-level "parameters" (pgmesh's stored shape)
// under postgresql.parameters, so documents in either shape merge and
// compare alike.
func toPatroniShape(obj map[string]any) error {
	top, ok := obj["parameters"]
	if !ok {
		return nil
	}
	delete(obj, "parameters")
	if top == nil {
		// null deletes: the same as postgresql.parameters: null.
		pgs, _ := obj["postgresql"].(map[string]any)
		if pgs == nil {
			pgs = map[string]any{}
		}
		pgs["parameters"] = nil
		obj["postgresql"] = pgs
		return nil
	}
	topMap, ok := top.(map[string]any)
	if !ok {
		return errors.New("parameters: expected an object")
	}
	pgs, _ := obj["postgresql"].(map[string]any)
	if pgs == nil {
		if obj["postgresql"] != nil {
			return errors.New("postgresql: expected an object")
		}
		pgs = map[string]any{}
	}
	params, _ := pgs["parameters"].(map[string]any)
	if params == nil {
		params = map[string]any{}
	}
	for k, v := range topMap {
		params[k] = v
	}
	pgs["parameters"] = params
	obj["postgresql"] = pgs
	return nil
}

// fromPatroniShape is the inverse for decoding: postgresql.parameters
// becomes the stored "parameters"; use_pg_rewind and use_slots must be true
// (or absent) because pgmesh cannot run without them.
func fromPatroniShape(obj map[string]any) error {
	raw, ok := obj["postgresql"]
	if !ok {
		return nil
	}
	delete(obj, "postgresql")
	if raw == nil {
		return nil
	}
	pgs, ok := raw.(map[string]any)
	if !ok {
		return errors.New("postgresql: expected an object")
	}
	for k, v := range pgs {
		switch k {
		case "parameters":
			if v != nil {
				obj["parameters"] = v
			}
		case "use_pg_rewind", "use_slots":
			if b, ok := v.(bool); !ok || !b {
				return fmt.Errorf("postgresql.%s: pgmesh always uses pg_rewind and replication slots; only true is accepted", k)
			}
		default:
			return fmt.Errorf("postgresql.%s: not a dynamic setting pgmesh knows (postgresql.parameters, use_pg_rewind and use_slots are)", k)
		}
	}
	return nil
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
	if err == nil {
		err = toPatroniShape(patch)
	}
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
			if base, err = PatroniConfig(cur); err != nil {
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
			s.writeConfig(w, r, cfg)
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
	s.writeConfig(w, r, cfg)
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
	if err := toPatroniShape(obj); err != nil {
		return nil, fmt.Errorf("invalid configuration: %v", err)
	}
	if err := fromPatroniShape(obj); err != nil {
		return nil, fmt.Errorf("invalid configuration: %v", err)
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
