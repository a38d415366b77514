//! The data-path port's allow-list: VXLAN carries no authentication, so any host that can
//! reach a node's data-path port could inject frames into its overlay networks. Each node keeps
//! an nftables table of its own (`inet mesh-underlay`) that accepts UDP to that port only from
//! the cluster's members and counts and drops the rest. [`ruleset`] plans the table from the
//! member list (pure); [`UnderlayGuard`] converges the kernel to it.
//!
//! The table outlives meshd, as the overlay's vxlan devices do (a restart must not leave them
//! open); leaving the cluster removes both.

pub mod ruleset;

use nftables::helper::{self, NftablesError, DEFAULT_NFT};

use crate::lb::nft::kernel::{apply_batch, in_ns};
use crate::lb::LbError;
use crate::overlay::netns::Netns;
pub use ruleset::{plan, Guard, DROPPED_COUNTER, FAMILY_NAME, TABLE};

/// The allow-list of the host namespace it was made in.
pub struct UnderlayGuard {
    /// The host namespace (the calling thread's at `new`): every change happens there.
    ns: Netns,
    /// What the kernel holds since the last successful apply (None: unknown).
    applied: Option<Guard>,
}

impl UnderlayGuard {
    /// A guard for the calling thread's network namespace; changes nothing until `apply`.
    pub fn new() -> Result<UnderlayGuard, LbError> {
        let ns = Netns::current("the host namespace").map_err(|err| LbError::Io {
            operation: "opening the host namespace".to_string(),
            source: std::io::Error::other(err.to_string()),
        })?;
        Ok(UnderlayGuard { ns, applied: None })
    }

    /// Converges the table to `desired` in one transaction; applying what was applied last
    /// sends nothing. A table the batch cannot update in place (left by another version) is
    /// rebuilt.
    pub fn apply(&mut self, desired: &Guard) -> Result<(), LbError> {
        if self.applied.as_ref() == Some(desired) {
            return Ok(());
        }
        self.applied = None;
        let batch = ruleset::transaction(desired);
        if let Err(first) = apply_batch(&self.ns, &batch) {
            apply_batch(&self.ns, &ruleset::removal())
                .and_then(|()| apply_batch(&self.ns, &batch))
                .map_err(|err| {
                    LbError::Nftables(format!("{first}; rebuilding the table: {err}"))
                })?;
        }
        self.applied = Some(desired.clone());
        Ok(())
    }

    /// Datagrams to the data-path port dropped because their source is no member, or None
    /// when the table is missing.
    pub fn dropped(&self) -> Result<Option<u64>, LbError> {
        let output = in_ns(&self.ns, "running nft", || {
            Ok(helper::get_current_ruleset_raw(
                DEFAULT_NFT,
                ["list", "counter", FAMILY_NAME, TABLE, DROPPED_COUNTER],
            ))
        })?;
        let output = match output {
            Ok(output) => output,
            Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file") => {
                return Ok(None)
            }
            Err(err) => {
                return Err(crate::lb::nft::kernel::nft_error(
                    "listing the counter",
                    err,
                ))
            }
        };
        let value: serde_json::Value = serde_json::from_str(&output)
            .map_err(|err| LbError::Nftables(format!("parsing nft's counter: {err}")))?;
        Ok(value["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|o| o.get("counter")?.get("packets")?.as_u64()))
    }

    /// Deletes the table (a missing table is no error).
    pub fn remove(&mut self) -> Result<(), LbError> {
        self.applied = None;
        apply_batch(&self.ns, &ruleset::removal())
    }
}
