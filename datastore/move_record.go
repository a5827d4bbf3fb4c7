package datastore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/name"
)

// ---- move records

// moveRecord marks a target group created by a move with merging off.
type moveRecord struct {
	From    string    `json:"from"`
	To      string    `json:"to"`
	Created time.Time `json:"created"`
}

func moveRecordPath(src, dst name.Group) string {
	h := sha256.Sum256([]byte(src.Path() + "\x00" + dst.Path()))
	return backend.Join(moveStateDir, hex.EncodeToString(h[:16])+".json")
}

func (s *Store) hasMoveRecord(ctx context.Context, src, dst name.Group) (bool, error) {
	_, err := s.b.Stat(ctx, moveRecordPath(src, dst))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("move state of group %s: %w", src, err)
	}
	return true, nil
}

func (s *Store) writeMoveRecord(ctx context.Context, src, dst name.Group) error {
	data, err := json.Marshal(moveRecord{From: groupLabel(src), To: groupLabel(dst), Created: time.Now().UTC()})
	if err != nil {
		return err
	}
	if err := s.b.WriteFile(ctx, moveRecordPath(src, dst), data); err != nil {
		return fmt.Errorf("move state of group %s: %w", src, err)
	}
	return nil
}

func (s *Store) removeMoveRecord(ctx context.Context, src, dst name.Group) error {
	if err := s.b.Remove(ctx, moveRecordPath(src, dst)); err != nil {
		return fmt.Errorf("move state of group %s: %w", src, err)
	}
	return nil
}
