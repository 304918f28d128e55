package pg

import (
	"strconv"
	"strings"
)

// ConnInfo describes how to reach a PostgreSQL server. It renders to a libpq
// keyword/value connection string, the one format accepted everywhere we need
// it: primary_conninfo, pg_basebackup -d, pg_rewind --source-server and pgx.
type ConnInfo struct {
	Host     string
	Port     int
	User     string
	Password string
	DBName   string
	AppName  string
	// ConnectTimeout in seconds; 0 leaves libpq's default (wait forever),
	// which is never what an HA agent wants for a dead peer.
	ConnectTimeout int
	// Passfile is a libpq password file to read the password from, for
	// connection strings that must not carry it (they end up in logs).
	Passfile string
}

// String renders the connection string. Every value is single-quoted with
// backslashes and quotes escaped, so passwords and hosts with spaces, quotes
// or backslashes survive intact. Empty fields are left out so libpq
// defaults apply.
//
// The result contains the password when one is set: never log it, use
// Redacted instead.
func (c ConnInfo) String() string {
	return c.render(true)
}

// Redacted renders the connection string with the password masked, for logs
// and error messages.
func (c ConnInfo) Redacted() string {
	return c.render(false)
}

func (c ConnInfo) render(withPassword bool) string {
	var b strings.Builder
	add := func(key, value string) {
		if value == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(quoteConnValue(value))
	}
	add("host", c.Host)
	if c.Port != 0 {
		add("port", strconv.Itoa(c.Port))
	}
	add("user", c.User)
	if c.Password != "" {
		if withPassword {
			add("password", c.Password)
		} else {
			add("password", "xxxxx")
		}
	}
	add("dbname", c.DBName)
	add("application_name", c.AppName)
	if c.ConnectTimeout > 0 {
		add("connect_timeout", strconv.Itoa(c.ConnectTimeout))
	}
	add("passfile", c.Passfile)
	return b.String()
}

// withoutPassword returns a copy safe to put on a command line, where any
// local user could read it from /proc; the password then travels in the
// child's environment (PGPASSWORD), which only its owner and root can read.
func (c ConnInfo) withoutPassword() ConnInfo {
	c.Password = ""
	return c
}

// quoteConnValue quotes a value for a libpq connection string: inside single
// quotes only backslash and single quote are special, and both are escaped
// with a backslash.
func quoteConnValue(v string) string {
	var b strings.Builder
	b.Grow(len(v) + 2)
	b.WriteByte('\'')
	// Byte-wise so that values which are not valid UTF-8 pass through
	// unchanged instead of being rewritten to U+FFFD.
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' || v[i] == '\'' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('\'')
	return b.String()
}
