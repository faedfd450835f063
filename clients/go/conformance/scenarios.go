package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	cachecoord "github.com/cachecoord/cachecoord/clients/go"
)

// scenarioFile is clients/conformance/scenarios.json (format: clients/conformance/README.md).
type scenarioFile struct {
	Version   int        `json:"version"`
	Scenarios []scenario `json:"scenarios"`
}

type scenario struct {
	Name  string                   `json:"name"`
	Auth  string                   `json:"auth"`
	Steps []map[string]interface{} `json:"steps"`
}

// errLoadFn is what the scenario's failing load function returns; a step expects it as code "LOAD_FN".
var errLoadFn = errors.New("load_fn failed (as the scenario asked)")

// runner executes scenarios, each with its own client holding the scenario's credentials; leases are saved by
// name for the current scenario.
type runner struct {
	target string
	tokens map[string]string
	runID  string
	leases map[string]cachecoord.LeaseToken
}

func runScenarios(target, file, runID, token string) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var suite scenarioFile
	if err := json.Unmarshal(raw, &suite); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	r := &runner{target: target, tokens: map[string]string{"token": token, "none": "", "wrong": "wrong-token"}, runID: runID}
	for _, sc := range suite.Scenarios {
		detail := r.run(sc)
		emit(map[string]interface{}{"scenario": sc.Name, "pass": detail == "", "detail": detail})
	}
	return nil
}

// run executes one scenario and answers why it failed ("" when it passed).
func (r *runner) run(sc scenario) string {
	auth := sc.Auth
	if auth == "" {
		auth = "token"
	}
	token, ok := r.tokens[auth]
	if !ok {
		return fmt.Sprintf("unknown auth %q", sc.Auth)
	}
	client, err := cachecoord.New(r.target, cachecoord.WithToken(token), cachecoord.WithTimeout(15*time.Second))
	if err != nil {
		return err.Error()
	}
	defer client.Close()
	r.leases = map[string]cachecoord.LeaseToken{}
	for i, raw := range sc.Steps {
		step := r.substitute(raw).(map[string]interface{})
		op, _ := step["op"].(string)
		expect, _ := step["expect"].(map[string]interface{})
		if expect == nil {
			expect = map[string]interface{}{}
		}
		got, err := r.do(client, op, step)
		if problem := check(got, err, expect); problem != "" {
			return fmt.Sprintf("step %d (%s): %s", i+1, op, problem)
		}
	}
	return ""
}

// substitute replaces {run} with the run id in every string of a step, arguments and expectations alike.
func (r *runner) substitute(v interface{}) interface{} {
	switch v := v.(type) {
	case string:
		return strings.ReplaceAll(v, "{run}", r.runID)
	case []interface{}:
		out := make([]interface{}, len(v))
		for i, item := range v {
			out[i] = r.substitute(item)
		}
		return out
	case map[string]interface{}:
		out := make(map[string]interface{}, len(v))
		for k, item := range v {
			out[k] = r.substitute(item)
		}
		return out
	}
	return v
}

func (r *runner) str(args map[string]interface{}, name string) string {
	s, _ := args[name].(string)
	return s
}

func (r *runner) strs(args map[string]interface{}, name string) []string {
	list, _ := args[name].([]interface{})
	out := make([]string, 0, len(list))
	for _, item := range list {
		s, _ := item.(string)
		out = append(out, s)
	}
	return out
}

// lease is the token an earlier step saved under the step's "lease" name.
func (r *runner) lease(args map[string]interface{}) (cachecoord.LeaseToken, error) {
	name, _ := args["lease"].(string)
	if token, ok := r.leases[name]; ok {
		return token, nil
	}
	return nil, fmt.Errorf("lease %q was never saved by an earlier step", name)
}

// entry is a set / set_many entry with its optional ttl_secs, version and lease.
func (r *runner) entry(args map[string]interface{}) (cachecoord.Entry, error) {
	e := cachecoord.Entry{Key: r.str(args, "key"), Value: []byte(r.str(args, "value"))}
	if ttl, ok := args["ttl_secs"].(float64); ok {
		d := time.Duration(ttl * float64(time.Second))
		e.TTL = &d
	}
	if v, ok := args["version"].(float64); ok {
		version := uint64(v)
		e.Version = &version
	}
	if _, ok := args["lease"]; ok {
		token, err := r.lease(args)
		if err != nil {
			return e, err
		}
		e.LeaseToken = token
	}
	return e, nil
}

func setOptions(e cachecoord.Entry) []cachecoord.SetOption {
	var opts []cachecoord.SetOption
	if e.TTL != nil {
		opts = append(opts, cachecoord.WithTTL(*e.TTL))
	}
	if e.Version != nil {
		opts = append(opts, cachecoord.WithVersion(*e.Version))
	}
	if e.LeaseToken != nil {
		opts = append(opts, cachecoord.WithLeaseToken(e.LeaseToken))
	}
	return opts
}

// do runs one step through the library and answers what it observed, in the shape of the step's EXPECT.
func (r *runner) do(client *cachecoord.Client, op string, args map[string]interface{}) (map[string]interface{}, error) {
	ctx := context.Background()
	switch op {
	case "get":
		var opts []cachecoord.GetOption
		if cacheOnly, _ := args["cache_only"].(bool); cacheOnly {
			opts = append(opts, cachecoord.CacheOnly())
		}
		result, err := client.Get(ctx, r.str(args, "key"), opts...)
		got := found(result)
		if result == nil {
			// Get answers nil for every miss (MISS or NEGATIVE alike): a miss's source is not observable through
			// the library, so it is not checked.
			if expect, ok := args["expect"].(map[string]interface{}); ok {
				got["source"] = expect["source"]
			}
		}
		return got, err
	case "get_with_lease":
		result, token, err := client.GetWithLease(ctx, r.str(args, "key"))
		if err != nil {
			return nil, err
		}
		if name, ok := args["save"].(string); ok && token != nil {
			r.leases[name] = token
		}
		got := found(result)
		got["lease"] = token != nil
		return got, nil
	case "get_many":
		keys := r.strs(args, "keys")
		results, err := client.GetMany(ctx, keys)
		if err != nil {
			return nil, err
		}
		list := make([]interface{}, len(results))
		for i, result := range results {
			item := found(result)
			item["key"] = keys[i]
			list[i] = item
		}
		return map[string]interface{}{"results": list}, nil
	case "set":
		e, err := r.entry(args)
		if err != nil {
			return nil, err
		}
		_, err = client.Set(ctx, e.Key, e.Value, setOptions(e)...)
		return map[string]interface{}{}, err
	case "set_many":
		raw, _ := args["entries"].([]interface{})
		entries := make([]cachecoord.Entry, 0, len(raw))
		for _, item := range raw {
			fields, _ := item.(map[string]interface{})
			e, err := r.entry(fields)
			if err != nil {
				return nil, err
			}
			entries = append(entries, e)
		}
		result, err := client.SetMany(ctx, entries)
		if err != nil {
			return nil, err
		}
		return map[string]interface{}{"written": result.Written, "stale_keys": result.StaleKeys, "lease_lost_keys": result.LeaseLostKeys}, nil
	case "invalidate":
		deleted, err := client.Invalidate(ctx, r.strs(args, "keys")...)
		return map[string]interface{}{"deleted": deleted}, err
	case "invalidate_pattern":
		deleted, err := client.InvalidatePattern(ctx, r.str(args, "pattern"))
		return map[string]interface{}{"deleted": deleted}, err
	case "release_lease":
		token, err := r.lease(args)
		if err != nil {
			return nil, err
		}
		released, err := client.ReleaseLease(ctx, r.str(args, "key"), token)
		return map[string]interface{}{"released": released}, err
	case "renew_lease":
		token, err := r.lease(args)
		if err != nil {
			return nil, err
		}
		_, err = client.RenewLease(ctx, r.str(args, "key"), token)
		return map[string]interface{}{}, err
	case "get_or_load":
		return r.getOrLoad(ctx, client, args)
	case "stats":
		_, err := client.Stats(ctx)
		return map[string]interface{}{}, err
	}
	return nil, fmt.Errorf("unknown op %q", op)
}

func (r *runner) getOrLoad(ctx context.Context, client *cachecoord.Client, args map[string]interface{}) (map[string]interface{}, error) {
	key := r.str(args, "key")
	value := "loaded:" + key
	if _, ok := args["load_value"]; ok {
		value = r.str(args, "load_value")
	}
	fails, _ := args["load_fails"].(bool)
	loads := 0
	load := func(ctx context.Context, key string) ([]byte, error) {
		loads++
		if fails {
			return nil, errLoadFn
		}
		return []byte(value), nil
	}
	var opts []cachecoord.SetOption
	if ttl, ok := args["ttl_secs"].(float64); ok {
		opts = append(opts, cachecoord.WithTTL(time.Duration(ttl*float64(time.Second))))
	}
	got, err := client.GetOrLoad(ctx, key, load, opts...)
	if err != nil {
		return nil, err
	}
	return map[string]interface{}{"value": string(got), "loads": loads}, nil
}

// found is the found / value / source of a get-like answer.
func found(result *cachecoord.Result) map[string]interface{} {
	if result == nil {
		return map[string]interface{}{"found": false}
	}
	return map[string]interface{}{"found": true, "value": string(result.Value), "source": string(result.Source)}
}

// check compares what a step observed with its EXPECT; "" when it matches.
func check(got map[string]interface{}, err error, expect map[string]interface{}) string {
	if want, ok := expect["error"].(map[string]interface{}); ok {
		return checkError(err, want)
	}
	if err != nil {
		return fmt.Sprintf("unexpected error: %v", err)
	}
	for name, want := range expect {
		switch name {
		case "results":
			if problem := checkResults(got["results"], want); problem != "" {
				return problem
			}
		case "deleted_at_least":
			if n := toFloat(got["deleted"]); n < toFloat(want) {
				return fmt.Sprintf("deleted %v, want at least %v", n, want)
			}
		case "stale_keys", "lease_lost_keys":
			if !sameSet(got[name], want) {
				return fmt.Sprintf("%s %v, want %v", name, got[name], want)
			}
		default:
			if !equal(got[name], want) {
				return fmt.Sprintf("%s = %v, want %v", name, show(got[name]), show(want))
			}
		}
	}
	return ""
}

func checkError(err error, want map[string]interface{}) string {
	code, _ := want["code"].(string)
	if err == nil {
		return fmt.Sprintf("succeeded, want error %s", code)
	}
	if code == "LOAD_FN" {
		if errors.Is(err, errLoadFn) {
			return ""
		}
		return fmt.Sprintf("error %v, want the load function's own error", err)
	}
	cerr := asError(err)
	if cerr == nil {
		return fmt.Sprintf("error %v is not a *cachecoord.Error", err)
	}
	if codeName(cerr.Code) != code {
		return fmt.Sprintf("code %s (%s: %s), want %s", codeName(cerr.Code), cerr.Reason, cerr.Message, code)
	}
	if reason, ok := want["reason"].(string); ok && reason != cerr.Reason {
		return fmt.Sprintf("reason %q (%s), want %q", cerr.Reason, cerr.Message, reason)
	}
	return ""
}

func checkResults(got, want interface{}) string {
	gotList, _ := got.([]interface{})
	wantList, _ := want.([]interface{})
	if len(gotList) != len(wantList) {
		return fmt.Sprintf("%d results, want %d", len(gotList), len(wantList))
	}
	for i := range wantList {
		g, _ := gotList[i].(map[string]interface{})
		w, _ := wantList[i].(map[string]interface{})
		for name, value := range w {
			if !equal(g[name], value) {
				return fmt.Sprintf("result %d: %s = %v, want %v", i, name, show(g[name]), show(value))
			}
		}
	}
	return ""
}

// equal compares an observed value with a JSON-decoded expectation (numbers as float64).
func equal(got, want interface{}) bool {
	if _, ok := want.(float64); ok {
		return toFloat(got) == want
	}
	return reflect.DeepEqual(got, want)
}

func toFloat(v interface{}) float64 {
	switch n := v.(type) {
	case int:
		return float64(n)
	case float64:
		return n
	}
	return -1
}

func sameSet(got, want interface{}) bool {
	g, _ := got.([]string)
	var w []string
	for _, item := range want.([]interface{}) {
		s, _ := item.(string)
		w = append(w, s)
	}
	g = append([]string(nil), g...)
	sort.Strings(g)
	sort.Strings(w)
	return len(g) == len(w) && (len(g) == 0 || reflect.DeepEqual(g, w))
}

func show(v interface{}) string {
	b, _ := json.Marshal(v)
	return string(b)
}
