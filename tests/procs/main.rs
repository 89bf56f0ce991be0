//! Process tier: `exo` processes on loopback (clusters, faults, the CLI, weights by window).

#[path = "../common/mod.rs"]
mod common;

mod chaos;
mod cli_bench;
mod cli_plan;
mod cli_run;
mod cluster_join;
mod cluster_processes;
mod cluster_surface;
mod placement_holdings;
mod profile_probe;
mod recovery;
mod speculation;
mod weights;
mod weights_big;
mod weights_hub;
