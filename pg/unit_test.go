package pg

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestConnInfoString(t *testing.T) {
	tests := []struct {
		name string
		in   ConnInfo
		want string
	}{
		{"empty", ConnInfo{}, ""},
		{"plain", ConnInfo{Host: "10.0.0.1", Port: 5432, User: "repl", AppName: "pg-1"},
			`host='10.0.0.1' port='5432' user='repl' application_name='pg-1'`},
		{"space", ConnInfo{Password: "a b"}, `password='a b'`},
		{"quote", ConnInfo{Password: "it's"}, `password='it\'s'`},
		{"backslash", ConnInfo{Password: `a\b`}, `password='a\\b'`},
		{"mixed", ConnInfo{User: `o'k\ "x"`, DBName: "my db", ConnectTimeout: 5},
			`user='o\'k\\ "x"' dbname='my db' connect_timeout='5'`},
		{"trailing backslash", ConnInfo{Password: `x\`}, `password='x\\'`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.String(); got != tt.want {
				t.Fatalf("String() = %s\nwant       %s", got, tt.want)
			}
		})
	}
}

// TestConnInfoRoundTrip proves the quoting with an independent parser that
// follows libpq's rules.
func TestConnInfoRoundTrip(t *testing.T) {
	for _, pw := range []string{"simple", "with space", `quo'te`, `back\slash`, `\'\\''`, "tab\there", `ends\`, "ünïcødé", `"dq"`, "=eq="} {
		ci := ConnInfo{Host: "db.example", Port: 6543, User: "us er", Password: pw, DBName: `d'b`, AppName: `a\pp`}
		cfg, err := pgconn.ParseConfig(ci.String())
		if err != nil {
			t.Fatalf("password %q: parse %s: %v", pw, ci.Redacted(), err)
		}
		if cfg.Password != pw || cfg.User != ci.User || cfg.Database != ci.DBName || cfg.Host != ci.Host || cfg.Port != 6543 ||
			cfg.RuntimeParams["application_name"] != ci.AppName {
			t.Fatalf("password %q: round trip mismatch: %+v", pw, cfg)
		}
	}
}

func TestConnInfoRedacted(t *testing.T) {
	ci := ConnInfo{Host: "h", User: "u", Password: "secret"}
	if r := ci.Redacted(); strings.Contains(r, "secret") || !strings.Contains(r, "password=") {
		t.Fatalf("Redacted() = %s", r)
	}
	if s := ci.withoutPassword().String(); strings.Contains(s, "password") {
		t.Fatalf("withoutPassword().String() = %s", s)
	}
}

func TestParseControlData(t *testing.T) {
	raw, err := os.ReadFile("testdata/controldata_pg15.txt")
	if err != nil {
		t.Fatal(err)
	}
	cd, err := parseControlData(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := ControlData{
		SystemID:               7712299834540323419,
		State:                  StateShutDown,
		Timeline:               1,
		PrevTimeline:           1,
		CheckpointLSN:          0x17414D0,
		RedoLSN:                0x17414D0,
		MinRecoveryEnd:         0,
		MinRecoveryEndTimeline: 0,
		WalLevel:               "replica",
		WalLogHints:            false,
		DataChecksums:          true,
	}
	got := cd
	got.Raw = nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", got, want)
	}
	if !cd.CleanShutdown() {
		t.Fatal("shut down cluster not reported as clean")
	}
	if cd.Raw["Latest checkpoint's NextXID"] != "0:724" {
		t.Fatalf("value with a colon mangled: %q", cd.Raw["Latest checkpoint's NextXID"])
	}
	if cd.Raw["Latest checkpoint's oldestCommitTsXid"] != "0" {
		t.Fatalf("label without space after colon mangled: %q", cd.Raw["Latest checkpoint's oldestCommitTsXid"])
	}

	// A crashed replica on a later timeline.
	text := strings.NewReplacer(
		"Database cluster state:               shut down", "Database cluster state:               in archive recovery",
		"Latest checkpoint's TimeLineID:       1", "Latest checkpoint's TimeLineID:       3",
		"Minimum recovery ending location:     0/0", "Minimum recovery ending location:     2/A0000D8",
		"Min recovery ending loc's timeline:   0", "Min recovery ending loc's timeline:   3",
	).Replace(string(raw))
	cd, err = parseControlData(text)
	if err != nil {
		t.Fatal(err)
	}
	if cd.State != StateInArchiveRecovery || cd.CleanShutdown() || cd.Timeline != 3 || cd.MinRecoveryEnd != 0x2_0A0000D8 || cd.MinRecoveryEndTimeline != 3 {
		t.Fatalf("parsed %+v", cd)
	}
	for _, s := range []string{StateInProduction, StateInCrashRecovery, StateShuttingDown} {
		if (ControlData{State: s}).CleanShutdown() {
			t.Errorf("state %q reported as clean", s)
		}
	}
	if !(ControlData{State: StateShutDownInRecovery}).CleanShutdown() {
		t.Error("shut down in recovery not reported as clean")
	}

	if _, err := parseControlData("garbage\n"); err == nil {
		t.Fatal("garbage parsed")
	}
	bad := strings.Replace(string(raw), "Latest checkpoint location:           0/17414D0", "Latest checkpoint location:           zz", 1)
	if _, err := parseControlData(bad); err == nil || !strings.Contains(err.Error(), "Latest checkpoint location") {
		t.Fatalf("bad LSN error = %v", err)
	}
}

func TestSlotName(t *testing.T) {
	tests := map[string]string{
		"pg1":        "pgmesh_pg1",
		"PG-1":       "pgmesh_pg_1",
		"db.node_2":  "pgmesh_db_node_2",
		"über node":  "pgmesh__ber_node",
		"":           "pgmesh_",
		"a;drop--'x": "pgmesh_a_drop___x",
	}
	for in, want := range tests {
		if got := SlotName(in); got != want {
			t.Errorf("SlotName(%q) = %q, want %q", in, got, want)
		}
	}
	long1 := strings.Repeat("a", 70) + "1"
	long2 := strings.Repeat("a", 70) + "2"
	s1, s2 := SlotName(long1), SlotName(long2)
	if len(s1) != 63 || len(s2) != 63 || s1 == s2 || !strings.HasPrefix(s1, SlotPrefix) {
		t.Fatalf("long names: %q (%d) %q (%d)", s1, len(s1), s2, len(s2))
	}
	if SlotName(long1) != s1 {
		t.Fatal("SlotName is not deterministic")
	}
	for _, s := range []string{s1, SlotName("Ünïcødé-Name.X")} {
		for _, r := range s {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
				t.Fatalf("%q contains %q", s, r)
			}
		}
	}
}

// TestSlotOwnership pins the rule that pgmesh only ever drops inactive
// physical slots with its prefix that are no longer wanted.
func TestSlotOwnership(t *testing.T) {
	phys := func(name string, active bool) ReplicationSlot {
		return ReplicationSlot{Name: name, Type: "physical", Active: active}
	}
	logical := func(name string, active bool) ReplicationSlot {
		return ReplicationSlot{Name: name, Type: "logical", Plugin: "pgoutput", Active: active}
	}
	tests := []struct {
		name      string
		slot      ReplicationSlot
		wanted    bool
		owned     bool
		dropped   bool
		conflicts bool
	}{
		{"owned unwanted inactive", phys("pgmesh_old", false), false, true, true, false},
		{"owned unwanted active", phys("pgmesh_old", true), false, true, false, false},
		{"owned wanted", phys("pgmesh_pg2", false), true, true, false, false},
		{"foreign physical", phys("other_tool", false), false, false, false, false},
		{"foreign physical active", phys("barman", true), false, false, false, false},
		{"prefix in the middle", phys("x_pgmesh_y", false), false, false, false, false},
		{"upper-case prefix", phys("PGMESH_x", false), false, false, false, false},
		{"logical with our prefix", logical("pgmesh_pg2", false), false, false, false, false},
		{"logical with our prefix, wanted name", logical("pgmesh_pg2", false), true, false, false, true},
		{"spock logical", logical("spk_pgedge_n1_sub_n2_n1", false), false, false, false, false},
		{"foreign logical", logical("foreign_logical", false), false, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ownsSlot(tt.slot); got != tt.owned {
				t.Fatalf("ownsSlot = %v, want %v", got, tt.owned)
			}
			wanted := map[string]bool{}
			if tt.wanted {
				wanted[tt.slot.Name] = true
			}
			plan := planSlots([]ReplicationSlot{tt.slot}, wanted)
			if dropped := len(plan.drop) == 1 && plan.drop[0] == tt.slot.Name; dropped != tt.dropped || len(plan.drop) > 1 {
				t.Fatalf("drop = %v, want dropped=%v", plan.drop, tt.dropped)
			}
			if len(plan.create) != 0 {
				t.Fatalf("create = %v for an existing name", plan.create)
			}
			if (len(plan.conflicts) > 0) != tt.conflicts {
				t.Fatalf("conflicts = %v, want %v", plan.conflicts, tt.conflicts)
			}
		})
	}

	// A whole server's worth: nothing foreign is ever dropped, even with
	// an empty member list.
	existing := []ReplicationSlot{
		phys("pgmesh_a", false), phys("pgmesh_b", true), phys("pgmesh_gone", false),
		phys("other_tool", false), logical("foreign_logical", false), logical("pgmesh_logical", false),
	}
	plan := planSlots(existing, map[string]bool{})
	if want := []string{"pgmesh_a", "pgmesh_gone"}; !reflect.DeepEqual(plan.drop, want) {
		t.Fatalf("drop = %v, want %v", plan.drop, want)
	}
	plan = planSlots(existing, map[string]bool{"pgmesh_a": true, "pgmesh_c": true})
	if want := []string{"pgmesh_gone"}; !reflect.DeepEqual(plan.drop, want) {
		t.Fatalf("drop = %v, want %v", plan.drop, want)
	}
	if want := []string{"pgmesh_c"}; !reflect.DeepEqual(plan.create, want) {
		t.Fatalf("create = %v, want %v", plan.create, want)
	}
}

func testConfig(dir string) Config {
	return Config{
		Name:        "pg-1",
		DataDir:     filepath.Join(dir, "data"),
		ListenAddr:  "0.0.0.0",
		Port:        5433,
		Superuser:   Credentials{User: "postgres", Password: "su"},
		Replication: Credentials{User: "replicator", Password: `re'pl\pw`},
		Parameters:  map[string]string{"wal_level": "logical", "Max_Wal_Senders": "4", "shared_preload_libraries": "spock", "work_mem": "8MB"},
		HBA:         []string{"hostssl all app 10.0.0.0/8 scram-sha-256"},
	}
}

func TestConfigValidation(t *testing.T) {
	dir := t.TempDir()
	ok := testConfig(dir)
	c, err := ok.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.BinDir != DefaultBinDir || c.ConnectHost != "127.0.0.1" || c.Parameters["max_wal_senders"] != "4" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if ok.Superuser.String() != "postgres:<redacted>" {
		t.Fatalf("Credentials.String leaks: %s", ok.Superuser)
	}

	tests := []struct {
		field  string
		modify func(*Config)
	}{
		{"Name", func(c *Config) { c.Name = "" }},
		{"Name", func(c *Config) { c.Name = "a b" }},
		{"DataDir", func(c *Config) { c.DataDir = "" }},
		{"DataDir", func(c *Config) { c.DataDir = "/" }},
		{"DataDir", func(c *Config) { c.DataDir = "/" + strings.Repeat("d", 100) }},
		{"BinDir", func(c *Config) { c.BinDir = "bin" }},
		{"Port", func(c *Config) { c.Port = 0 }},
		{"Port", func(c *Config) { c.Port = 70000 }},
		{"ListenAddr", func(c *Config) { c.ListenAddr = "" }},
		{"ConnectHost", func(c *Config) { c.ConnectHost = "a,b" }},
		{"Superuser.User", func(c *Config) { c.Superuser.User = "" }},
		{"Superuser.Password", func(c *Config) { c.Superuser.Password = "" }},
		{"Replication.User", func(c *Config) { c.Replication.User = `a"b` }},
		{"Replication.Password", func(c *Config) { c.Replication.Password = "a\nb" }},
		{"Parameters[port]", func(c *Config) { c.Parameters = map[string]string{"port": "1"} }},
		{"Parameters[Primary_Conninfo]", func(c *Config) { c.Parameters = map[string]string{"Primary_Conninfo": "x"} }},
		{"Parameters[bad name]", func(c *Config) { c.Parameters = map[string]string{"bad name": "1"} }},
		{"Parameters[work_mem]", func(c *Config) { c.Parameters = map[string]string{"work_mem": "1\n"} }},
		{"Parameters[wal_level]", func(c *Config) { c.Parameters = map[string]string{"wal_level": "minimal"} }},
		{"HBA[0]", func(c *Config) { c.HBA = []string{"local all all trust\nhost all all 0.0.0.0/0 trust"} }},
	}
	for _, tt := range tests {
		c := testConfig(dir)
		tt.modify(&c)
		_, err := New(c, nil)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("%s: got %v, want a ConfigError for that field", tt.field, err)
		}
	}
}

func TestDefaultConnectHost(t *testing.T) {
	for in, want := range map[string]string{"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "10.1.2.3": "10.1.2.3", "10.1.2.3, ::1": "10.1.2.3", "db1": "db1"} {
		if got := defaultConnectHost(in); got != want {
			t.Errorf("defaultConnectHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRenderConf(t *testing.T) {
	c, err := testConfig(t.TempDir()).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	follow := &FollowTarget{Host: "10.0.0.2", Port: 5432, SlotName: "pgmesh_pg_1"}
	replica := renderConf(c, Replica, follow)
	got := parseManagedConf(replica)
	want := map[string]string{
		"listen_addresses":         "0.0.0.0",
		"port":                     "5433",
		"unix_socket_directories":  c.DataDir + ".run",
		"cluster_name":             "pg-1",
		"hot_standby":              "on",
		"wal_level":                "logical", // overridden
		"max_wal_senders":          "10",      // floor beats a lower override
		"max_replication_slots":    "10",
		"wal_log_hints":            "on",
		"hot_standby_feedback":     "on",
		"wal_keep_size":            "128MB",
		"recovery_target_timeline": "latest",
		"shared_preload_libraries": "spock",
		"work_mem":                 "8MB",
		"primary_conninfo":         `host='10.0.0.2' port='5432' user='replicator' password='re\'pl\\pw' application_name='pg-1' connect_timeout='5'`,
		"primary_slot_name":        "pgmesh_pg_1",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("replica settings\n got %v\nwant %v\nfile:\n%s", got, want, replica)
	}
	// Exactly how a value with quotes and backslashes lands in the file.
	if !strings.Contains(string(replica), `primary_conninfo = 'host=''10.0.0.2'' port=''5432'' user=''replicator'' password=''re\\''pl\\\\pw'' application_name=''pg-1'' connect_timeout=''5'''`) {
		t.Fatalf("primary_conninfo not escaped as expected:\n%s", replica)
	}
	if !reflect.DeepEqual(renderConf(c, Replica, follow), replica) {
		t.Fatal("rendering is not deterministic")
	}

	primary := parseManagedConf(renderConf(c, Primary, follow))
	if _, ok := primary["primary_conninfo"]; ok {
		t.Fatal("primary has primary_conninfo")
	}
	if _, ok := primary["primary_slot_name"]; ok {
		t.Fatal("primary has primary_slot_name")
	}
	changed, restart := diffNeedsRestart(got, primary)
	if !reflect.DeepEqual(changed, []string{"primary_conninfo", "primary_slot_name"}) || restart {
		t.Fatalf("replica->primary diff = %v restart=%v; want a reload only", changed, restart)
	}
	c2 := c
	c2.Parameters = map[string]string{"shared_buffers": "1GB"}
	changed, restart = diffNeedsRestart(primary, parseManagedConf(renderConf(c2, Primary, nil)))
	if !restart || !reflect.DeepEqual(changed, []string{"shared_buffers", "shared_preload_libraries", "wal_level", "work_mem"}) {
		t.Fatalf("parameter diff = %v restart=%v", changed, restart)
	}
}

func TestQuoteConfRoundTrip(t *testing.T) {
	for _, v := range []string{"", "plain", "it's", `a\b`, `''`, `\'`, "x = 'y' # z"} {
		line := "k = " + quoteConfValue(v) + "\n"
		if got := parseManagedConf([]byte(line))["k"]; got != v {
			t.Errorf("value %q rendered as %q parsed back as %q", v, line, got)
		}
	}
}

func TestEnsureInclude(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", includeLine + "\n"},
		{"a = 1\n", "a = 1\n" + includeLine + "\n"},
		{"a = 1", "a = 1\n" + includeLine + "\n"},
		{"a = 1\n" + includeLine + "\n", "a = 1\n" + includeLine + "\n"},
		{includeLine + "\na = 1\n", "a = 1\n" + includeLine + "\n"},
		{"include = 'postgresql.pgmesh.conf'\nx=1\n  include_if_exists 'postgresql.pgmesh.conf' # old\n" + includeLine + "\n", "x=1\n" + includeLine + "\n"},
		{"include 'other.conf'\n", "include 'other.conf'\n" + includeLine + "\n"},
		{"#include 'postgresql.pgmesh.conf'\n", "#include 'postgresql.pgmesh.conf'\n" + includeLine + "\n"},
	}
	for _, tt := range tests {
		if got := string(ensureInclude([]byte(tt.in))); got != tt.want {
			t.Errorf("ensureInclude(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if got := string(ensureInclude(ensureInclude([]byte(tt.in)))); got != tt.want {
			t.Errorf("ensureInclude is not idempotent for %q: %q", tt.in, got)
		}
	}
}

func TestRenderHBA(t *testing.T) {
	c, err := testConfig(t.TempDir()).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, l := range strings.Split(string(renderHBA(c)), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			rules = append(rules, strings.Join(strings.Fields(l), " "))
		}
	}
	want := []string{
		"local all all trust",
		"local replication all trust",
		`host replication "replicator" 127.0.0.1/32 scram-sha-256`,
		`host replication "replicator" ::1/128 scram-sha-256`,
		`host replication "replicator" 0.0.0.0/0 scram-sha-256`,
		`host replication "replicator" ::/0 scram-sha-256`,
		`host all "postgres" 127.0.0.1/32 scram-sha-256`,
		`host all "postgres" ::1/128 scram-sha-256`,
		"hostssl all app 10.0.0.0/8 scram-sha-256",
		"host all all 0.0.0.0/0 scram-sha-256",
		"host all all ::/0 scram-sha-256",
	}
	if !reflect.DeepEqual(rules, want) {
		t.Fatalf("pg_hba rules\n got %q\nwant %q", rules, want)
	}
}

// TestWriteConfigFiles exercises WriteConfig on a fake data directory:
// change detection, restart classification and the signal file.
func TestWriteConfigFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	inst, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	dd := inst.DataDir()
	if _, _, err := inst.WriteConfig(Primary, nil); err == nil {
		t.Fatal("WriteConfig without a data directory succeeded")
	}
	if err := os.MkdirAll(dd, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"PG_VERSION": "15\n", "postgresql.conf": "max_connections = 100\n"} {
		if err := os.WriteFile(filepath.Join(dd, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	step := func(role Role, follow *FollowTarget, wantChanged, wantRestart bool) {
		t.Helper()
		changed, restart, err := inst.WriteConfig(role, follow)
		if err != nil {
			t.Fatal(err)
		}
		if changed != wantChanged || restart != wantRestart {
			t.Fatalf("WriteConfig(%s, %v) = changed %v restart %v, want %v %v", role, follow, changed, restart, wantChanged, wantRestart)
		}
		if fileExists(filepath.Join(dd, standbySignal)) != (role == Replica) {
			t.Fatalf("standby.signal presence wrong for %s", role)
		}
	}
	step(Primary, nil, true, true)
	step(Primary, nil, false, false)
	f1 := &FollowTarget{Host: "10.0.0.2", Port: 5432, SlotName: "pgmesh_pg_1"}
	step(Replica, f1, true, true) // standby.signal appears
	step(Replica, f1, false, false)
	f2 := &FollowTarget{Host: "10.0.0.3", Port: 5432, SlotName: "pgmesh_pg_1"}
	step(Replica, f2, true, false) // new upstream: reload suffices
	// Promotion removed standby.signal already (as PostgreSQL does).
	if err := os.Remove(filepath.Join(dd, standbySignal)); err != nil {
		t.Fatal(err)
	}
	step(Primary, nil, true, false)

	main, err := os.ReadFile(filepath.Join(dd, "postgresql.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(main), includeLine) != 1 || !strings.HasSuffix(string(main), includeLine+"\n") {
		t.Fatalf("postgresql.conf:\n%s", main)
	}
	entries, _ := os.ReadDir(dd)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temp file left behind: %s", e.Name())
		}
		if info, _ := e.Info(); info.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s has mode %v; config files hold passwords", e.Name(), info.Mode())
		}
	}
	if _, _, err := inst.WriteConfig(Replica, &FollowTarget{Host: "", Port: 5432}); err == nil {
		t.Fatal("follow target without host accepted")
	}
	if _, _, err := inst.WriteConfig("leader", nil); err == nil {
		t.Fatal("unknown role accepted")
	}
}

func TestRemoveDataDirRefusesNonDataDir(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	inst, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.RemoveDataDir(); err != nil {
		t.Fatalf("missing dir: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(inst.DataDir(), "precious"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := inst.RemoveDataDir(); err == nil {
		t.Fatal("removed a directory without PG_VERSION")
	}
	if _, err := os.Stat(filepath.Join(inst.DataDir(), "precious")); err != nil {
		t.Fatal("refused removal still deleted content")
	}
	if err := os.WriteFile(filepath.Join(inst.DataDir(), "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := inst.RemoveDataDir(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inst.DataDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data dir still there: %v", err)
	}
}

func TestTimelineFromWalFile(t *testing.T) {
	tli, err := timelineFromWalFile("0000000A0000000100000002")
	if err != nil || tli != 10 {
		t.Fatalf("got %d, %v", tli, err)
	}
	if _, err := timelineFromWalFile("xyz"); err == nil {
		t.Fatal("short name accepted")
	}
}

func TestStatusLastLSN(t *testing.T) {
	if got := (Status{CurrentLSN: 100, ReceiveLSN: 5}).LastLSN(); got != 100 {
		t.Fatalf("primary LastLSN = %v", got)
	}
	if got := (Status{InRecovery: true, ReceiveLSN: 50, ReplayLSN: 70}).LastLSN(); got != 70 {
		t.Fatalf("replica LastLSN = %v", got)
	}
	if got := (Status{InRecovery: true, ReceiveLSN: 90, ReplayLSN: 70}).LastLSN(); got != 90 {
		t.Fatalf("replica LastLSN = %v", got)
	}
}
