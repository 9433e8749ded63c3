package fakefc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// The request bodies, transcribed from Firecracker's OpenAPI document
// independently of the driver's own types, so that a wrong field name or
// type on the driver's side is caught here rather than mirrored.
//
// Every field is a pointer so that a missing field is told apart from a
// zero. The fc tag carries the schema's rules: "required", "enum=A|B",
// "min=N", "max=N".

type machineConfigBody struct {
	VCPUCount       *int64  `json:"vcpu_count" fc:"required,min=1,max=32"`
	MemSizeMiB      *int64  `json:"mem_size_mib" fc:"required,min=0"`
	SMT             *bool   `json:"smt"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	CPUTemplate     *string `json:"cpu_template" fc:"enum=C3|T2|T2S|T2CL|T2A|V1N1|None"`
	HugePages       *string `json:"huge_pages" fc:"enum=None|Transparent|2M"`
}

type bootSourceBody struct {
	KernelImagePath *string `json:"kernel_image_path" fc:"required"`
	InitrdPath      *string `json:"initrd_path"`
	BootArgs        *string `json:"boot_args"`
}

type tokenBucketBody struct {
	Size         *int64 `json:"size" fc:"required,min=0"`
	OneTimeBurst *int64 `json:"one_time_burst" fc:"min=0"`
	RefillTime   *int64 `json:"refill_time" fc:"required,min=0"`
}

type rateLimiterBody struct {
	Bandwidth *tokenBucketBody `json:"bandwidth"`
	Ops       *tokenBucketBody `json:"ops"`
}

type driveBody struct {
	DriveID      *string          `json:"drive_id" fc:"required"`
	PartUUID     *string          `json:"partuuid"`
	IsRootDevice *bool            `json:"is_root_device" fc:"required"`
	CacheType    *string          `json:"cache_type" fc:"enum=Unsafe|Writeback"`
	IsReadOnly   *bool            `json:"is_read_only"`
	PathOnHost   *string          `json:"path_on_host"`
	RateLimiter  *rateLimiterBody `json:"rate_limiter"`
	IOEngine     *string          `json:"io_engine" fc:"enum=Sync|Async"`
	Socket       *string          `json:"socket"`
}

type vsockBody struct {
	GuestCID *int64  `json:"guest_cid" fc:"required,min=3,max=4294967295"`
	UDSPath  *string `json:"uds_path" fc:"required"`
	VsockID  *string `json:"vsock_id"`
}

type actionBody struct {
	ActionType *string `json:"action_type" fc:"required,enum=FlushMetrics|InstanceStart|SendCtrlAltDel"`
}

type vmBody struct {
	State *string `json:"state" fc:"required,enum=Paused|Resumed"`
}

// deserializeError words a body that does not match its schema as
// Firecracker does.
func deserializeError(format string, args ...any) error {
	return faultf("An error occurred when deserializing the json body of a request: %s.", fmt.Sprintf(format, args...))
}

// fault is an error answered as Firecracker's fault_message, worded in
// Firecracker's style (capitalised, with a full stop).
type fault string

func (f fault) Error() string { return string(f) }

func faultf(format string, args ...any) error { return fault(fmt.Sprintf(format, args...)) }

// decode checks body against the schema of dst (a pointer to one of the
// body structs) and fills dst: the body must be one JSON object with only
// known fields, none null, every required field present, each of the
// declared type and within its enum and range. Nested objects are checked
// the same way.
func decode(body []byte, dst any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return faultf("Empty request body.")
	}
	return decodeValue(body, reflect.ValueOf(dst).Elem(), "")
}

func decodeValue(raw json.RawMessage, v reflect.Value, where string) error {
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&fields); err != nil {
		return deserializeError("%s%s", in(where), describeJSONError(err))
	}
	if dec.More() {
		return deserializeError("trailing characters after the object")
	}
	if fields == nil {
		return deserializeError("%sinvalid type: null, expected an object", in(where))
	}
	t := v.Type()
	var names []string
	for i := range t.NumField() {
		names = append(names, jsonName(t.Field(i)))
	}
	for k := range fields {
		if !slices.Contains(names, k) {
			quoted := make([]string, len(names))
			for i, n := range names {
				quoted[i] = "`" + n + "`"
			}
			return deserializeError("%sunknown field `%s`, expected one of %s", in(where), k, strings.Join(quoted, ", "))
		}
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name := jsonName(f)
		rules := parseRules(f.Tag.Get("fc"))
		val, present := fields[name]
		if !present {
			if rules.required {
				return deserializeError("%smissing field `%s`", in(where), name)
			}
			continue
		}
		if string(bytes.TrimSpace(val)) == "null" {
			return deserializeError("%sinvalid type: null, expected %s for field `%s`", in(where), kindName(f.Type.Elem()), name)
		}
		fv := reflect.New(f.Type.Elem())
		if f.Type.Elem().Kind() == reflect.Struct {
			if err := decodeValue(val, fv.Elem(), where+name+"."); err != nil {
				return err
			}
		} else if err := decodeScalar(val, fv.Elem(), name, rules); err != nil {
			return deserializeError("%s%v", in(where), err)
		}
		v.Field(i).Set(fv)
	}
	return nil
}

func in(where string) string {
	if where == "" {
		return ""
	}
	return "in `" + strings.TrimSuffix(where, ".") + "`: "
}

func decodeScalar(raw json.RawMessage, v reflect.Value, name string, r rules) error {
	switch v.Kind() {
	case reflect.Bool:
		var b bool
		if err := json.Unmarshal(raw, &b); err != nil {
			return fmt.Errorf("invalid type: %s, expected a boolean for field `%s`", raw, name)
		}
		v.SetBool(b)
	case reflect.String:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf("invalid type: %s, expected a string for field `%s`", raw, name)
		}
		if len(r.enum) > 0 && !slices.Contains(r.enum, s) {
			return fmt.Errorf("unknown variant `%s`, expected one of `%s` for field `%s`", s, strings.Join(r.enum, "`, `"), name)
		}
		v.SetString(s)
	case reflect.Int64:
		n, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
		if err != nil {
			return fmt.Errorf("invalid type: %s, expected an integer for field `%s`", raw, name)
		}
		if r.hasMin && n < r.min || r.hasMax && n > r.max {
			return fmt.Errorf("invalid value: integer `%d`, expected %s for field `%s`", n, r.rangeText(), name)
		}
		v.SetInt(n)
	default:
		return fmt.Errorf("field `%s`: unsupported schema type %s", name, v.Kind())
	}
	return nil
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	return name
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.String:
		return "a string"
	case reflect.Int64:
		return "an integer"
	case reflect.Struct:
		return "an object"
	}
	return t.Kind().String()
}

type rules struct {
	required       bool
	enum           []string
	hasMin, hasMax bool
	min, max       int64
}

func (r rules) rangeText() string {
	switch {
	case r.hasMin && r.hasMax:
		return fmt.Sprintf("a value from %d to %d", r.min, r.max)
	case r.hasMin:
		return fmt.Sprintf("a value of at least %d", r.min)
	}
	return fmt.Sprintf("a value of at most %d", r.max)
}

func parseRules(tag string) rules {
	var r rules
	for _, part := range strings.Split(tag, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "required":
			r.required = true
		case "enum":
			r.enum = strings.Split(v, "|")
		case "min":
			r.hasMin = true
			r.min, _ = strconv.ParseInt(v, 10, 64)
		case "max":
			r.hasMax = true
			r.max, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return r
}

func describeJSONError(err error) string {
	if te, ok := err.(*json.UnmarshalTypeError); ok {
		return fmt.Sprintf("invalid type: %s, expected an object", te.Value)
	}
	return err.Error()
}
