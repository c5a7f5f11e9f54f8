package volume

// SetAdoptHook sets the hook AdoptChain runs between opening the layers
// and recording them; the returned function removes it.
func SetAdoptHook(f func()) (restore func()) {
	testHookAdopt = f
	return func() { testHookAdopt = nil }
}

// SetCloneHook sets the hook Clone runs between reading the snapshot and
// recording the clone; the returned function removes it.
func SetCloneHook(f func()) (restore func()) {
	testHookClone = f
	return func() { testHookClone = nil }
}
