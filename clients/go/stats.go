package cachecoord

import (
	"context"

	"github.com/cachecoord/cachecoord/clients/go/internal/pb"
)

// Stats is how the answering replica has answered since it started (each replica counts its own answers).
type Stats struct {
	// Entities holds one entry per entity, sorted by entity.
	Entities []EntityStats
	// RedisNodes describes every Redis node as the replica last read it; empty with the embedded store.
	RedisNodes []RedisNode
}

// EntityStats counts one entity's answers by source.
type EntityStats struct {
	Entity       string
	Hits         uint64
	NearHits     uint64
	NegativeHits uint64
	Stale        uint64
	Misses       uint64
	Loads        uint64
	Coalesced    uint64
	Fallbacks    uint64
	// HitRatio is (hits + near hits + negative hits + stale) / all answers.
	HitRatio float64
}

// RedisNode is one Redis node's memory, eviction and replication state.
type RedisNode struct {
	Node            string
	Role            string
	UsedMemoryBytes uint64
	MaxmemoryBytes  uint64
	MaxmemoryPolicy string
	EvictedKeys     uint64
	// ReplicationLagBytes is nil for a primary (or when its primary could not be read).
	ReplicationLagBytes *uint64
	OOMRefusals         uint64
	BusyRefusals        uint64
}

// Stats asks the answering replica for its counters.
func (c *Client) Stats(ctx context.Context) (*Stats, error) {
	var reply *pb.StatsResponse
	err := c.call(ctx, true, func(ctx context.Context) (err error) {
		reply, err = c.cache.Stats(ctx, &pb.StatsRequest{})
		return err
	})
	if err != nil {
		return nil, err
	}
	stats := &Stats{}
	for _, e := range reply.Entities {
		stats.Entities = append(stats.Entities, EntityStats{
			Entity: e.Entity, Hits: e.Hits, NearHits: e.NearHits, NegativeHits: e.NegativeHits, Stale: e.Stale,
			Misses: e.Misses, Loads: e.Loads, Coalesced: e.Coalesced, Fallbacks: e.Fallbacks, HitRatio: e.HitRatio,
		})
	}
	for _, n := range reply.RedisNodes {
		stats.RedisNodes = append(stats.RedisNodes, RedisNode{
			Node: n.Node, Role: n.Role, UsedMemoryBytes: n.UsedMemoryBytes, MaxmemoryBytes: n.MaxmemoryBytes,
			MaxmemoryPolicy: n.MaxmemoryPolicy, EvictedKeys: n.EvictedKeys, ReplicationLagBytes: n.ReplicationLagBytes,
			OOMRefusals: n.OomRefusals, BusyRefusals: n.BusyRefusals,
		})
	}
	return stats, nil
}
