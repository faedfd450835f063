package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	cachecoord "github.com/cachecoord/cachecoord/clients/go"
)

// runStampede: callers goroutines run GetOrLoad on one cold key at once; the load function sleeps 100 ms and counts
// its calls. They share `count` Clients (caller i uses client i%count, client j targets[j%len]); count 0 gives
// each caller its own.
func runStampede(targets []string, key string, callers, count int, token string) error {
	var loads, failures int64
	want := "loaded:" + key
	load := func(ctx context.Context, key string) ([]byte, error) {
		atomic.AddInt64(&loads, 1)
		time.Sleep(100 * time.Millisecond)
		return []byte("loaded:" + key), nil
	}
	if count <= 0 {
		count = callers
	}
	clients := make([]*cachecoord.Client, count)
	for i := range clients {
		client, err := cachecoord.New(targets[i%len(targets)], cachecoord.WithToken(token), cachecoord.WithTimeout(30*time.Second))
		if err != nil {
			return err
		}
		defer client.Close()
		clients[i] = client
	}
	start := make(chan struct{})
	valuesOK := int64(1)
	var wg sync.WaitGroup
	for i := 0; i < callers; i++ {
		client := clients[i%count]
		wg.Add(1)
		go func(client *cachecoord.Client) {
			defer wg.Done()
			<-start
			value, err := client.GetOrLoad(context.Background(), key, load)
			if err != nil {
				atomic.AddInt64(&failures, 1)
				atomic.StoreInt64(&valuesOK, 0)
				logf("stampede caller: %v", err)
				return
			}
			if string(value) != want {
				atomic.StoreInt64(&valuesOK, 0)
			}
		}(client)
	}
	close(start)
	wg.Wait()
	emit(map[string]interface{}{"loads": loads, "errors": failures, "values_ok": valuesOK == 1})
	return nil
}
