package testbed

import (
	"context"
	"testing"
	"time"
)

// TestComponentsStart proves the test bed brings up the real components.
func TestComponentsStart(t *testing.T) {
	c := StartConsul(t, ConsulOptions{})
	leader, err := c.Client().Status().Leader()
	if err != nil || leader == "" {
		t.Fatalf("consul has no leader: %q %v", leader, err)
	}
	p := StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var version string
	if err := p.Connect(ctx).QueryRow(ctx, "SHOW server_version_num").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version[:2] != "15" {
		t.Fatalf("want PostgreSQL 15, got %s", version)
	}
}
