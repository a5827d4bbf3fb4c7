package datastore

import (
	"reflect"
	"testing"
)

// TestResultAdd: Add sums every count and joins every list of the results
// that sharded jobs add up, so a field added to a result cannot be left out
// of the sum. Only the fields named here describe a whole run instead.
func TestResultAdd(t *testing.T) {
	t.Run("verify", func(t *testing.T) {
		checkAdd(t, func(a, b *VerifyResult) { a.Add(b) }, "Seconds", "MiBPerSecond", "Sample")
	})
	t.Run("sync", func(t *testing.T) {
		checkAdd(t, func(a, b *SyncResult) { a.Add(b) }, "Seconds", "MiBPerSecond")
	})
}

// checkAdd fills every field of two R with distinct values by reflection
// and checks that add sums numbers and appends lists; a field of another
// kind must be named in whole (they are checked to stay as they were).
func checkAdd[R any](t *testing.T, add func(a, b *R), whole ...string) {
	var a, b R
	va, vb := reflect.ValueOf(&a).Elem(), reflect.ValueOf(&b).Elem()
	typ := va.Type()
	skip := map[string]bool{}
	for _, n := range whole {
		if _, ok := typ.FieldByName(n); !ok {
			t.Fatalf("%s has no field %s", typ, n)
		}
		skip[n] = true
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		if skip[f.Name] {
			continue
		}
		switch f.Type.Kind() {
		case reflect.Int, reflect.Int64:
			va.Field(i).SetInt(int64(10*i + 1))
			vb.Field(i).SetInt(int64(1000*i + 7))
		case reflect.Slice:
			va.Field(i).Set(reflect.MakeSlice(f.Type, 1, 1))
			vb.Field(i).Set(reflect.MakeSlice(f.Type, 2, 2))
		default:
			t.Fatalf("%s.%s (%s): Add neither sums nor joins it; sum it or name it as a whole-run field", typ, f.Name, f.Type)
		}
	}
	before := reflect.ValueOf(a)
	add(&a, &b)
	for i := range typ.NumField() {
		f := typ.Field(i)
		got := va.Field(i)
		switch {
		case skip[f.Name]:
			if !reflect.DeepEqual(got.Interface(), before.Field(i).Interface()) {
				t.Errorf("%s.%s changed by Add", typ, f.Name)
			}
		case f.Type.Kind() == reflect.Slice:
			if got.Len() != 3 {
				t.Errorf("%s.%s: %d entries after Add, want 1+2", typ, f.Name, got.Len())
			}
		default:
			if want := int64(10*i+1) + int64(1000*i+7); got.Int() != want {
				t.Errorf("%s.%s = %d after Add, want %d", typ, f.Name, got.Int(), want)
			}
		}
	}
}
