//! Host-side stub so `gateway/build.rs` can depend on this crate; the program is `main.rs`.
#![no_std]
