package pg

import (
	"encoding/json"
	"testing"
)

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in      string
		want    LSN
		wantErr bool
	}{
		{"0/0", 0, false},
		{"0/16B3748", 0x16B3748, false},
		{"0/16b3748", 0x16B3748, false},
		{"1/0", 1 << 32, false},
		{"16/B374D848", 0x16_B374D848, false},
		{"FFFFFFFF/FFFFFFFF", ^LSN(0), false},
		{"00000000/00000001", 1, false},
		{"", 0, true},
		{"/", 0, true},
		{"0/", 0, true},
		{"/0", 0, true},
		{"0", 0, true},
		{"0/0/0", 0, true},
		{"G/0", 0, true},
		{"+1/0", 0, true},
		{"-1/0", 0, true},
		{"0x1/0", 0, true},
		{" 0/0", 0, true},
		{"0/0 ", 0, true},
		{"1_0/0", 0, true},
		{"100000000/0", 0, true}, // 9 digits: PostgreSQL rejects it too
		{"0/000000001", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseLSN(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseLSN(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && got != tt.want {
			t.Errorf("ParseLSN(%q) = %#x, want %#x", tt.in, uint64(got), uint64(tt.want))
		}
	}
}

func TestLSNString(t *testing.T) {
	tests := []struct {
		in   LSN
		want string
	}{
		{0, "0/0"},
		{0x16B3748, "0/16B3748"},
		{1 << 32, "1/0"},
		{0x16_B374D848, "16/B374D848"},
		{^LSN(0), "FFFFFFFF/FFFFFFFF"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("LSN(%#x).String() = %q, want %q", uint64(tt.in), got, tt.want)
		}
		back, err := ParseLSN(tt.want)
		if err != nil || back != tt.in {
			t.Errorf("round trip %q: got %v, %v", tt.want, back, err)
		}
	}
}

func TestLSNCompare(t *testing.T) {
	a, _ := ParseLSN("0/FFFFFFFF")
	b, _ := ParseLSN("1/0")
	c, _ := ParseLSN("1/1")
	if !(a < b && b < c) {
		t.Fatalf("ordering broken: %v %v %v", a, b, c)
	}
	if d := b - a; d != 1 {
		t.Fatalf("distance 0/FFFFFFFF..1/0 = %d, want 1 byte", d)
	}
	if max(a, c) != c {
		t.Fatalf("max(%v,%v) != %v", a, c, c)
	}
}

func TestLSNJSON(t *testing.T) {
	type wrap struct {
		L LSN  `json:"l"`
		P *LSN `json:"p"`
	}
	l := LSN(0x3_0000_00A0)
	data, err := json.Marshal(wrap{L: 0x16B3748, P: &l})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(data), `{"l":"0/16B3748","p":"3/A0"}`; got != want {
		t.Fatalf("marshal = %s, want %s", got, want)
	}
	var w wrap
	if err := json.Unmarshal(data, &w); err != nil {
		t.Fatal(err)
	}
	if w.L != 0x16B3748 || w.P == nil || *w.P != l {
		t.Fatalf("unmarshal = %+v", w)
	}
	if err := json.Unmarshal([]byte(`{"l":"nope"}`), &w); err == nil {
		t.Fatal("unmarshal of a bad LSN succeeded")
	}
	if err := json.Unmarshal([]byte(`{"l":12}`), &w); err == nil {
		t.Fatal("unmarshal of a number succeeded; LSNs are strings")
	}
}

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "0/16B3748", "FFFFFFFF/FFFFFFFF", "", "/", "1/", "x/y", "000000001/0", "+1/-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLSN(s)
		if err != nil {
			return
		}
		// Whatever parses must format to something that parses back to
		// the same position.
		back, err := ParseLSN(l.String())
		if err != nil {
			t.Fatalf("ParseLSN(%q) = %v, but its String %q does not parse: %v", s, l, l.String(), err)
		}
		if back != l {
			t.Fatalf("round trip of %q: %v != %v", s, back, l)
		}
	})
}
