package store

import (
	"encoding/json"
	"fmt"
	"time"
)

// The scanners below read a column the same way from both engines:
// PostgreSQL hands back time.Time and JSONB text, SQLite the TEXT this
// package wrote.

// timeCol scans a NOT NULL timestamp.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(src any) error {
	t, ok, err := parseTime(src)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("timestamp is NULL")
	}
	*c.t = t
	return nil
}

// nullTimeCol scans a nullable timestamp into a *time.Time (nil for NULL).
type nullTimeCol struct{ t **time.Time }

func (c nullTimeCol) Scan(src any) error {
	t, ok, err := parseTime(src)
	if err != nil {
		return err
	}
	if !ok {
		*c.t = nil
		return nil
	}
	*c.t = &t
	return nil
}

// zeroTimeCol scans a nullable timestamp into a time.Time (zero for NULL).
type zeroTimeCol struct{ t *time.Time }

func (c zeroTimeCol) Scan(src any) error {
	t, _, err := parseTime(src)
	if err != nil {
		return err
	}
	*c.t = t
	return nil
}

func parseTime(src any) (time.Time, bool, error) {
	switch v := src.(type) {
	case nil:
		return time.Time{}, false, nil
	case time.Time:
		return v.UTC(), true, nil
	case string:
		return parseTimeText(v)
	case []byte:
		return parseTimeText(string(v))
	}
	return time.Time{}, false, fmt.Errorf("timestamp: unexpected %T", src)
}

func parseTimeText(s string) (time.Time, bool, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("timestamp %q: %w", s, err)
	}
	return t.UTC(), true, nil
}

// jsonCol scans a nullable JSON column into raw JSON (nil for NULL).
type jsonCol struct{ b *json.RawMessage }

func (c jsonCol) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*c.b = nil
	case string:
		*c.b = json.RawMessage(v)
	case []byte:
		*c.b = append(json.RawMessage(nil), v...)
	default:
		return fmt.Errorf("json: unexpected %T", src)
	}
	return nil
}

// jsonValue scans a NOT NULL JSON column and decodes it into v.
type jsonValue struct{ v any }

func (c jsonValue) Scan(src any) error {
	var b []byte
	switch s := src.(type) {
	case string:
		b = []byte(s)
	case []byte:
		b = s
	default:
		return fmt.Errorf("json: unexpected %T", src)
	}
	return json.Unmarshal(b, c.v)
}

// rawJSONArg validates raw JSON and returns what to store: NULL when empty.
func rawJSONArg(field string, raw json.RawMessage) (any, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	if !json.Valid(raw) {
		return nil, invalid(field, "not valid JSON")
	}
	return string(raw), nil
}

// jsonArg encodes v for a NOT NULL JSON column.
func jsonArg(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return string(b), nil
}
