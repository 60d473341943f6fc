//! The container's root filesystem, set up from inside its new mount namespace: the overlay
//! mount, /proc, /dev, /sys, masked and read-only paths, and pivot_root.
//! (to be written)
