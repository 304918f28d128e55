package pg

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL write-ahead log position (the pg_lsn type).
//
// It is kept as a plain integer so positions compare with < and subtract to
// byte distances, which is what lag checks need; the textual "X/Y" form is
// only used at the edges (SQL, pg_controldata, JSON).
type LSN uint64

// maxLSNComponent mirrors PostgreSQL's MAXPG_LSNCOMPONENT: pg_lsn_in rejects
// halves longer than 8 hex digits even when they are zero-padded, and we want
// to accept exactly what the server accepts.
const maxLSNComponent = 8

// ParseLSN parses the textual "X/Y" form PostgreSQL prints for pg_lsn
// values, e.g. "0/16B3748".
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("parse LSN %q: missing '/'", s)
	}
	h, err := parseLSNHalf(hi)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: high half: %w", s, err)
	}
	l, err := parseLSNHalf(lo)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: low half: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

func parseLSNHalf(s string) (uint64, error) {
	if len(s) == 0 || len(s) > maxLSNComponent {
		return 0, fmt.Errorf("want 1 to %d hex digits, got %d characters", maxLSNComponent, len(s))
	}
	// ParseUint would accept a leading '+' or '_' separators in some bases;
	// PostgreSQL accepts hex digits only.
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return 0, fmt.Errorf("invalid hex digit %q", c)
		}
	}
	return strconv.ParseUint(s, 16, 32)
}

// String formats the LSN the way PostgreSQL does ("%X/%X").
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// MarshalText makes LSN encode as its "X/Y" string in JSON, YAML and
// anything else that honours encoding.TextMarshaler, so operators see the
// same notation as in psql.
func (l LSN) MarshalText() ([]byte, error) {
	return []byte(l.String()), nil
}

// UnmarshalText is the inverse of MarshalText.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}
