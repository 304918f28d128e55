package pg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"
)

// Passwords with quotes, backslashes and spaces prove the quoting of
// primary_conninfo (libpq inside the walreceiver), postgresql.conf, initdb's
// pwfile and PGPASSWORD end to end.
var (
	itSuper = Credentials{User: "postgres", Password: `su'per "pw\ 1`}
	itRepl  = Credentials{User: "replicator", Password: `re'pl\ pw "2`}
)

// cluster is the harness for one integration test: instances in a temp dir,
// stopped (and their logs printed on failure) in t.Cleanup.
type cluster struct {
	t      *testing.T
	base   string
	osUser string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	if _, err := os.Stat(filepath.Join(DefaultBinDir, "initdb")); err != nil {
		t.Skipf("PostgreSQL 15 binaries not installed (%v); integration test needs %s", err, DefaultBinDir)
	}
	c := &cluster{t: t, base: t.TempDir()}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses root; run it as the Debian package's user.
		c.osUser = "postgres"
		// t.TempDir's directories are 0700 root; the postgres user must be
		// able to traverse them. The base itself stays root-owned, which
		// also checks that we never need to write there as that user.
		for _, d := range []string{filepath.Dir(c.base), c.base} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return c
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (c *cluster) member(name string) *Instance {
	t := c.t
	t.Helper()
	inst, err := New(Config{
		Name:        name,
		DataDir:     filepath.Join(c.base, name),
		ListenAddr:  "127.0.0.1",
		Port:        freePort(t),
		Superuser:   itSuper,
		Replication: itRepl,
		// Small enough for a 2-core CI box; logical as in a Spock mesh so
		// logical slots can be created.
		Parameters: map[string]string{"wal_level": "logical", "shared_buffers": "16MB", "max_connections": "30"},
		OSUser:     c.osUser,
	}, zaptest.NewLogger(t).Named(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := inst.Stop(ctx, StopImmediate); err != nil {
			t.Logf("%s: stop: %v; killing", name, err)
			if err := inst.Kill(); err != nil {
				t.Logf("%s: kill: %v", name, err)
			}
		}
		_ = inst.Close()
		if t.Failed() {
			if data, err := os.ReadFile(inst.LogFile()); err == nil {
				t.Logf("==== PostgreSQL log of %s (%s) ====\n%s", name, inst.LogFile(), data)
			}
		}
	})
	return inst
}

// eventually polls fn until it reports done or the deadline passes, then
// fails with the last observation.
func eventually(t *testing.T, ctx context.Context, what string, timeout time.Duration, fn func(ctx context.Context) (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := "(not checked)"
	for {
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		done, seen := fn(qctx)
		qcancel()
		if done {
			return
		}
		last = seen
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %s waiting for %s; last seen: %s", timeout, what, last)
		case <-tick.C:
		}
	}
}

func rowValue(ctx context.Context, inst *Instance, id int) (string, error) {
	rows, err := inst.Query(ctx, "SELECT v FROM t WHERE id = $1", id)
	if err != nil {
		return "", err
	}
	if len(rows) == 0 {
		return "", nil
	}
	return fmt.Sprint(rows[0]["v"]), nil
}

func waitRow(t *testing.T, ctx context.Context, inst *Instance, id int, want string) {
	t.Helper()
	eventually(t, ctx, fmt.Sprintf("row %d = %q on %s", id, want, inst.Config().Name), 30*time.Second, func(ctx context.Context) (bool, string) {
		v, err := rowValue(ctx, inst, id)
		if err != nil {
			return false, err.Error()
		}
		return v == want, fmt.Sprintf("v=%q", v)
	})
}

func waitFollowing(t *testing.T, ctx context.Context, replica *Instance, primaryName string, primary *Instance, timeline uint32) {
	t.Helper()
	eventually(t, ctx, fmt.Sprintf("%s streaming from %s on timeline %d", replica.Config().Name, primaryName, timeline), 30*time.Second, func(ctx context.Context) (bool, string) {
		st, err := replica.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		if !st.InRecovery || st.WalReceiver == nil || st.WalReceiver.Status != "streaming" || st.Timeline != timeline ||
			st.WalReceiver.SenderPort != primary.Config().Port {
			return false, fmt.Sprintf("in_recovery=%v timeline=%d receiver=%+v", st.InRecovery, st.Timeline, st.WalReceiver)
		}
		pst, err := primary.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, r := range pst.Replication {
			if r.ApplicationName == replica.Config().Name && r.State == "streaming" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("primary pg_stat_replication: %+v", pst.Replication)
	})
}

func slotNames(t *testing.T, ctx context.Context, inst *Instance) map[string]ReplicationSlot {
	t.Helper()
	slots, err := inst.ReplicationSlots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]ReplicationSlot{}
	for _, s := range slots {
		m[s.Name] = s
	}
	return m
}

func mustExec(t *testing.T, ctx context.Context, inst *Instance, sql string, args ...any) {
	t.Helper()
	if _, err := inst.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %s: %v", inst.Config().Name, sql, err)
	}
}

// TestIntegrationReplicationFailoverRewind runs real PostgreSQL 15: bootstrap
// a primary, clone a replica, replicate, manage slots without touching
// foreign ones, fail over, rewind the old primary and make it follow; then
// the reverse with a real divergence and a crashed old primary, which needs
// single-user crash recovery before pg_rewind.
func TestIntegrationReplicationFailoverRewind(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	p := c.member("pg1")
	r := c.member("pg2")

	// --- bootstrap -------------------------------------------------------
	if err := p.Initdb(ctx); err != nil {
		t.Fatal(err)
	}
	if !p.HasDataDir() {
		t.Fatal("no data directory after initdb")
	}
	if err := p.Initdb(ctx); !errors.Is(err, ErrDataDirExists) {
		t.Fatalf("second initdb: %v", err)
	}
	cd, err := p.ControlData(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cd.State != StateShutDown || cd.SystemID == 0 || cd.Timeline != 1 || !cd.DataChecksums {
		t.Fatalf("control data after initdb: %+v", cd)
	}
	if changed, _, err := p.WriteConfig(Primary, nil); err != nil || changed {
		t.Fatalf("WriteConfig after Initdb: changed=%v err=%v; Initdb should have written it", changed, err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if running, pid := p.IsRunning(); !running || pid == 0 {
		t.Fatal("primary not running after Start")
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("Start of a running server: %v", err)
	}
	for range 2 { // idempotent
		if err := p.CreateReplicationUser(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// --- clone -----------------------------------------------------------
	// A failed clone must leave nothing behind.
	bad := c.member("pgbad")
	if err := bad.Basebackup(ctx, ConnInfo{Host: "127.0.0.1", Port: freePort(t), ConnectTimeout: 2}); err == nil {
		t.Fatal("basebackup from a closed port succeeded")
	}
	entries, err := os.ReadDir(c.base)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), "pgbad") {
			t.Fatalf("failed clone left %s behind", e.Name())
		}
	}

	if err := r.Basebackup(ctx, ConnInfo{Host: "127.0.0.1", Port: p.Config().Port}); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(r.DataDir()); err != nil || info.Mode().Perm() != 0o700 {
		t.Fatalf("cloned data dir: %v %v", info, err)
	}
	if err := r.Basebackup(ctx, ConnInfo{Host: "127.0.0.1", Port: p.Config().Port}); !errors.Is(err, ErrDataDirExists) {
		t.Fatalf("second basebackup: %v", err)
	}
	changed, restart, err := r.WriteConfig(Replica, &FollowTarget{Host: "127.0.0.1", Port: p.Config().Port, SlotName: SlotName("pg2")})
	if err != nil || !changed || !restart {
		t.Fatalf("WriteConfig(Replica) = %v %v %v", changed, restart, err)
	}
	if err := p.EnsurePhysicalSlots(ctx, []string{"pg1", "pg2"}); err != nil {
		t.Fatal(err)
	}
	slots := slotNames(t, ctx, p)
	if _, ok := slots["pgmesh_pg2"]; !ok {
		t.Fatalf("slot for pg2 missing: %v", slots)
	}
	if _, ok := slots["pgmesh_pg1"]; ok {
		t.Fatal("primary holds a slot for itself")
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}

	// --- replication -----------------------------------------------------
	mustExec(t, ctx, p, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	mustExec(t, ctx, p, "INSERT INTO t VALUES (1, 'one')")
	waitRow(t, ctx, r, 1, "one")
	waitFollowing(t, ctx, r, "pg1", p, 1)

	pst, err := p.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rst, err := r.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pst.InRecovery || pst.Timeline != 1 || pst.CurrentLSN == 0 || pst.LastLSN() != pst.CurrentLSN || pst.ServerVersion/10000 != 15 {
		t.Fatalf("primary status: %+v", pst)
	}
	var found bool
	for _, rc := range pst.Replication {
		if rc.ApplicationName == "pg2" {
			found = rc.ClientAddr == "127.0.0.1" && rc.State == "streaming" && rc.SyncState == "async" && rc.SentLSN > 0 && rc.User == itRepl.User
			if !found {
				t.Fatalf("pg_stat_replication row for pg2: %+v", rc)
			}
		}
	}
	if !found {
		t.Fatalf("pg2 missing from pg_stat_replication: %+v", pst.Replication)
	}
	if !rst.InRecovery || rst.SystemID != pst.SystemID || rst.SystemID != cd.SystemID || rst.ReplayLSN == 0 ||
		rst.WalReceiver.SlotName != "pgmesh_pg2" || rst.LastLSN() == 0 || rst.StartTime.IsZero() {
		t.Fatalf("replica status: %+v receiver %+v", rst, rst.WalReceiver)
	}
	for _, inst := range []*Instance{p, r} {
		if err := inst.CheckpointIfPrimary(ctx); err != nil {
			t.Fatalf("%s: CheckpointIfPrimary: %v", inst.Config().Name, err)
		}
		if err := inst.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		if pending, err := inst.PendingRestart(ctx); err != nil || len(pending) != 0 {
			t.Fatalf("%s: pending restart %v %v", inst.Config().Name, pending, err)
		}
	}
	// Replication origins as a subscriber's apply leaves them: a commit
	// carrying an origin reaches the standby with its remote position; an
	// origin nothing was applied of is listed at 0/0 (a standby shows it
	// only in the catalog).
	if err := p.WithConn(ctx, func(c *pgx.Conn) error {
		for _, sql := range []string{
			"SELECT pg_replication_origin_create('spk_applied')",
			"SELECT pg_replication_origin_create('spk_idle')",
			"CREATE TABLE origin_probe(i int)",
			"SELECT pg_replication_origin_session_setup('spk_applied')",
			"BEGIN",
			"SELECT pg_replication_origin_xact_setup('0/1234ABC', now())",
			"INSERT INTO origin_probe VALUES (1)",
			"COMMIT",
			"SELECT pg_replication_origin_session_reset()",
		} {
			if _, err := c.Exec(ctx, sql); err != nil {
				return fmt.Errorf("%s: %w", sql, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantOrigins := []ReplicationOrigin{{Name: "spk_applied", Slot: "spk_applied", RemoteLSN: 0x1234ABC}, {Name: "spk_idle", Slot: "spk_idle"}}
	for _, inst := range []*Instance{p, r} {
		eventually(t, ctx, inst.Config().Name+"'s replication origins", 30*time.Second, func(ctx context.Context) (bool, string) {
			got, err := inst.ReplicationOrigins(ctx)
			caughtUp, cerr := inst.ReplayCaughtUp(ctx)
			return err == nil && cerr == nil && caughtUp && reflect.DeepEqual(got, wantOrigins), fmt.Sprintf("%+v %v caught up %v %v", got, err, caughtUp, cerr)
		})
	}
	if js, err := json.Marshal(pst); err != nil || !strings.Contains(string(js), `"current_lsn":"`+pst.CurrentLSN.String()+`"`) {
		t.Fatalf("status JSON: %s %v", js, err)
	}

	// --- slot ownership --------------------------------------------------
	mustExec(t, ctx, p, "SELECT pg_create_logical_replication_slot('foreign_logical', 'pgoutput')")
	mustExec(t, ctx, p, "SELECT pg_create_logical_replication_slot('pgmesh_logical', 'pgoutput')")
	mustExec(t, ctx, p, "SELECT pg_create_physical_replication_slot('other_tool')")
	mustExec(t, ctx, p, "SELECT pg_create_physical_replication_slot('pgmesh_stale')")
	if err := p.EnsurePhysicalSlots(ctx, nil); err != nil {
		t.Fatal(err)
	}
	slots = slotNames(t, ctx, p)
	for _, keep := range []string{"foreign_logical", "pgmesh_logical", "other_tool", "pgmesh_pg2"} {
		if _, ok := slots[keep]; !ok {
			t.Fatalf("EnsurePhysicalSlots(nil) dropped %s; slots now %v", keep, slots)
		}
	}
	if _, ok := slots["pgmesh_stale"]; ok {
		t.Fatal("inactive unwanted pgmesh slot survived")
	}
	if !slots["pgmesh_pg2"].Active {
		t.Fatal("pgmesh_pg2 not active although pg2 streams")
	}
	if err := p.EnsurePhysicalSlots(ctx, []string{"pg1", "pg2"}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"foreign_logical", "pgmesh_logical", "other_tool"} {
		mustExec(t, ctx, p, "SELECT pg_drop_replication_slot($1)", s)
	}

	// --- failover 1: clean stop, promote, rewind (nothing to undo) -------
	if err := p.Stop(ctx, StopFast); err != nil {
		t.Fatal(err)
	}
	if running, _ := p.IsRunning(); running {
		t.Fatal("pg1 still running after stop")
	}
	if err := p.Stop(ctx, StopFast); err != nil {
		t.Fatalf("stop of a stopped server: %v", err)
	}
	if err := r.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Promote(ctx); err != nil {
		t.Fatalf("second promote: %v", err)
	}
	rst, err = r.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rst.InRecovery || rst.Timeline != 2 {
		t.Fatalf("after promotion: in_recovery=%v timeline=%d", rst.InRecovery, rst.Timeline)
	}
	if _, _, err := r.WriteConfig(Primary, nil); err != nil {
		t.Fatal(err)
	}
	if err := r.EnsurePhysicalSlots(ctx, []string{"pg1", "pg2"}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, r, "INSERT INTO t VALUES (2, 'two')")

	if err := p.Rewind(ctx, ConnInfo{Host: "127.0.0.1", Port: r.Config().Port}); err != nil {
		t.Fatal(err)
	}
	if _, restart, err := p.WriteConfig(Replica, &FollowTarget{Host: "127.0.0.1", Port: r.Config().Port, SlotName: SlotName("pg1")}); err != nil || !restart {
		t.Fatalf("WriteConfig after rewind: restart=%v err=%v", restart, err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, p, 2, "two")
	waitFollowing(t, ctx, p, "pg2", r, 2)
	if v, err := rowValue(ctx, p, 1); err != nil || v != "one" {
		t.Fatalf("row 1 on rewound pg1: %q %v", v, err)
	}
	// The agent's connection must survive a server restart.
	if err := p.Restart(ctx, StopFast); err != nil {
		t.Fatal(err)
	}
	waitFollowing(t, ctx, p, "pg2", r, 2)

	// --- failover 2: split brain, divergent write, crash, rewind ---------
	if err := p.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	// pg2 still believes it is primary and takes a write pg1 never sees.
	mustExec(t, ctx, r, "INSERT INTO t VALUES (3, 'diverged')")
	if err := r.Stop(ctx, StopImmediate); err != nil {
		t.Fatal(err)
	}
	cd, err = r.ControlData(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cd.CleanShutdown() {
		t.Fatalf("immediate stop left a clean state %q; test would not exercise crash recovery", cd.State)
	}
	if _, _, err := p.WriteConfig(Primary, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.EnsurePhysicalSlots(ctx, []string{"pg1", "pg2"}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, p, "INSERT INTO t VALUES (4, 'four')")

	if err := r.Rewind(ctx, ConnInfo{Host: "127.0.0.1", Port: p.Config().Port}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.WriteConfig(Replica, &FollowTarget{Host: "127.0.0.1", Port: p.Config().Port, SlotName: SlotName("pg2")}); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, r, 4, "four")
	waitFollowing(t, ctx, r, "pg1", p, 3)
	if v, err := rowValue(ctx, r, 3); err != nil || v != "" {
		t.Fatalf("divergent row on rewound pg2: %q %v (rewind did not undo it)", v, err)
	}

	// --- fencing and re-clone preparation ---------------------------------
	if err := r.RemoveDataDir(); err == nil {
		t.Fatal("removed the data directory of a running server")
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if running, _ := r.IsRunning(); running {
		t.Fatal("pg2 running after Kill")
	}
	if err := r.RemoveDataDir(); err != nil {
		t.Fatal(err)
	}
	if r.HasDataDir() {
		t.Fatal("data directory still present")
	}
}

// TestIntegrationFailures checks that a rewind that cannot work is reported
// as ErrRewindFailed (so the agent re-clones) with the tool output, and that
// a failed start explains itself with the server log.
func TestIntegrationFailures(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := c.member("a")
	b := c.member("b")
	for _, inst := range []*Instance{a, b} {
		if err := inst.Initdb(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// b is an unrelated cluster (different system identifier).
	err := b.Rewind(ctx, ConnInfo{Host: "127.0.0.1", Port: a.Config().Port})
	var re *RewindError
	if !errors.Is(err, ErrRewindFailed) || !errors.As(err, &re) || re.Stage != "pg_rewind" || !strings.Contains(re.Output, "different systems") {
		t.Fatalf("rewind of an unrelated cluster: %v (%+v)", err, re)
	}

	// b configured onto a's port cannot start; the error must say why.
	clash := b.Config()
	clash.Port = a.Config().Port
	bc, err := New(clash, zaptest.NewLogger(t).Named("b-clash"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := bc.WriteConfig(Primary, nil); err != nil {
		t.Fatal(err)
	}
	err = bc.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("start on a used port: %v", err)
	}
	t.Logf("expected start failure: %v", err)
	if running, _ := bc.IsRunning(); running {
		t.Fatal("b running although start failed")
	}
}
