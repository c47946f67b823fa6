//! Boot images: what a node network-boots.
//!
//! - [`cpio`]: the `newc` archive format the kernel unpacks as its initramfs.
//! - [`initramfs`]: builds a node initramfs that runs `ferry agent` before the image.
//! - [`store`]: the content-addressed object store and image import.
//! - [`pack`] and [`unpack`]: an image's root file system as a tar stream with every
//!   extended attribute, and its unpacking into a node's tmpfs; [`acl`]: GNU tar's text
//!   ACLs as the kernel's attribute form.
//! - [`seal`]: sealed images (chunked XChaCha20-Poly1305 under a per-image key).
//! - [`root`]: opening a stored root archive for unpacking; [`tarstream`]: reading a
//!   tar stream with PAX records parsed by their length.

pub mod acl;
pub mod cpio;
pub mod initramfs;
pub mod pack;
pub mod root;
pub mod seal;
pub mod store;
pub mod tarstream;
pub mod unpack;

#[cfg(test)]
mod image_tests;
