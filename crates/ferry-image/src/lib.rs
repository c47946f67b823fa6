//! Boot images: what a node network-boots.
//!
//! - [`cpio`]: the `newc` archive format the kernel unpacks as its initramfs.
//! - [`initramfs`]: builds a node initramfs that runs `ferry agent` before the image.
//! - [`store`]: the content-addressed object store and image import.

pub mod cpio;
pub mod initramfs;
pub mod store;
