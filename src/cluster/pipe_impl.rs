//! What a cluster pipeline shows of its stages (with its [`crate::pipeline::Pipeline`] impl,
//! that makes it the [`crate::pipeline::Pipe`] the runtime holds).

use super::ClusterChain;
use crate::engine::LayerRange;
use crate::pipeline::Stages;

impl Stages for ClusterChain {
    fn stage_list(&self, _here: &str) -> Vec<(String, LayerRange)> {
        self.stages().iter().map(|s| (s.node.clone(), s.range)).collect()
    }
    fn all_up(&self) -> bool {
        self.healthy()
    }
    fn remote(&self) -> bool {
        true
    }
}
