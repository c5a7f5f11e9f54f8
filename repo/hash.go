package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
)

type hasher struct{ hash.Hash }

func newHasher() hasher { return hasher{sha256.New()} }

func (h hasher) digest() string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }
