package volume

import "github.com/obdvol/obdvol/snapshot"

// Chain is the chain the volume reads through now (nil once closed).
func (v *Volume) Chain() *snapshot.Chain {
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	if v.chain == nil {
		return nil
	}
	return v.chain.c
}
