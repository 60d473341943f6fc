//! Node networking for shoal: everything that touches the kernel's network stack.
//!
//! - [`netns`]: named network namespaces (bind-mounted nsfs files) and running code inside one.
//! - [`link`]: bridges, veth pairs, VXLAN devices, addresses, routes, FDB and neighbour
//!   entries, over rtnetlink.
//! - [`nft`]: the nftables rulesets shoal owns (one `shoal` table per namespace), built with the
//!   `nftables` crate and applied atomically.
//! - [`dns`]: the embedded resolver that answers service names inside a task's namespace.
//!
//! The crate knows nothing of clusters: callers say what to program, this crate programs it.

pub mod dns;
pub mod link;
pub mod netns;
pub mod nft;
