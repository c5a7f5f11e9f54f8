package volume

// Test hooks for package volume_test.

// SetResizeHook makes Resize call f between its steps (see Resize); an
// error from f stops Resize there, as a crash would. It returns the
// function that restores the previous hook.
func SetResizeHook(f func(step string) error) (restore func()) {
	old := resizeHook
	resizeHook = f
	return func() { resizeHook = old }
}

// SetSyncDirHook makes every directory fsync also call f with the
// directory. It returns the function that restores the previous one.
func SetSyncDirHook(f func(dir string)) (restore func()) {
	old := syncDir
	syncDir = func(dir string) error { f(dir); return old(dir) }
	return func() { syncDir = old }
}

// OpenLayers is the number of layers the manager holds open.
func (m *Manager) OpenLayers() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.layers)
}
