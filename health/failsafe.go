package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"go.uber.org/zap"
)

// FailsafeRequest is what a leader that cannot reach Consul sends every
// other member of its group in failsafe mode (POST /failsafe): who it is
// and what it last saw of the group. A member that accepts promises not to
// take over while the leader keeps asking.
type FailsafeRequest struct {
	Name     string `json:"name"`
	APIURL   string `json:"api_url,omitempty"`
	ConnURL  string `json:"conn_url,omitempty"`
	Timeline uint32 `json:"timeline,omitempty"`
	// Members are the group's members as the leader last saw them in
	// Consul (name → REST API URL), itself included.
	Members map[string]string `json:"members,omitempty"`
}

// FailsafeAnswer is a member's answer to POST /failsafe.
type FailsafeAnswer struct {
	// Accepted: the member cannot reach Consul either, does not run as a
	// primary, and will not take over while the promise lasts.
	Accepted bool
	// Refusal says why not (sent as the body; Patroni's wording where it
	// has one, e.g. "Running as a leader").
	Refusal string
	// Code is the HTTP status of a refusal (500 as Patroni when 0).
	Code int
	// LSN is the member's received/replayed WAL position (0 unknown).
	LSN uint64
}

// ErrFailsafeOff is returned by a Controller whose cluster does not run in
// failsafe mode (answered 502, as Patroni).
var ErrFailsafeOff = errors.New("failsafe mode is not enabled")

// FailsafeController is implemented by controllers that take part in
// failsafe mode. Controllers without it answer 502 to /failsafe.
type FailsafeController interface {
	// Failsafe judges a leader's request (POST /failsafe).
	Failsafe(ctx context.Context, req FailsafeRequest) (FailsafeAnswer, error)
	// FailsafeMembers is the group as failsafe mode knows it (GET
	// /failsafe): member → REST API URL; ErrFailsafeOff when off.
	FailsafeMembers() (map[string]string, error)
}

func (s *Server) handleGetFailsafe(w http.ResponseWriter, r *http.Request) {
	fc, ok := s.ctl.(FailsafeController)
	if !ok {
		writeText(w, r, http.StatusBadGateway, ErrFailsafeOff.Error())
		return
	}
	members, err := fc.FailsafeMembers()
	if err != nil {
		writeText(w, r, http.StatusBadGateway, err.Error())
		return
	}
	writeJSON(w, r, http.StatusOK, members)
}

func (s *Server) handlePostFailsafe(w http.ResponseWriter, r *http.Request) {
	fc, ok := s.ctl.(FailsafeController)
	if !ok {
		writeText(w, r, http.StatusBadGateway, ErrFailsafeOff.Error())
		return
	}
	var req FailsafeRequest
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(&req); err != nil {
		writeText(w, r, http.StatusBadRequest, "failsafe: the body must be a JSON object: "+err.Error())
		return
	}
	if req.Name == "" {
		writeText(w, r, http.StatusBadRequest, "failsafe: name is required")
		return
	}
	ans, err := fc.Failsafe(r.Context(), req)
	switch {
	case errors.Is(err, ErrFailsafeOff):
		writeText(w, r, http.StatusBadGateway, err.Error())
		return
	case err != nil:
		writeText(w, r, http.StatusInternalServerError, "failsafe: "+err.Error())
		return
	}
	if ans.LSN != 0 {
		w.Header().Set("lsn", strconv.FormatUint(ans.LSN, 10))
	}
	if ans.Accepted {
		s.log.Info("failsafe: accepted the leader's request", zap.String("leader", req.Name))
		writeText(w, r, http.StatusOK, "Accepted")
		return
	}
	code := ans.Code
	if code == 0 {
		code = http.StatusInternalServerError
	}
	s.log.Info("failsafe: refused the leader's request", zap.String("leader", req.Name), zap.String("reason", ans.Refusal))
	writeText(w, r, code, ans.Refusal)
}
