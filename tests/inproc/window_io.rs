//! A middle stage reads only its own layers from disk. This file holds a single test so that the
//! process-wide read counter in /proc/self/io sees no other test's reads.

use crate::common;

use exo::engine::{Batch, BatchInput, ContextParams, ModelWindow, StageHandle, StageSpec};
use exo::gguf::{GgufFile, ModelFiles, ModelShape};
use exo::synth;

fn rchar() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    s.lines().find_map(|l| l.strip_prefix("rchar: ")).expect("rchar line").trim().parse().unwrap()
}

#[tokio::test]
async fn middle_stage_reads_only_its_window() {
    // wide layers (about 4 MB each) so the window dwarfs the header and the margin
    let spec =
        synth::ModelSpec { n_embd: 256, n_ff: 1024, n_head: 8, n_head_kv: 4, ..synth::preset("tiny-llama").unwrap() };
    let path = common::model_from(&spec, "wide-llama");
    let shape = ModelShape::from_files(&ModelFiles::open(&path).unwrap()).unwrap();
    let header = GgufFile::open(&path).unwrap().data_offset;
    let file_size = std::fs::metadata(&path).unwrap().len();
    let (b, e) = (3, 5);
    let window = shape.window_bytes(b, e);

    let before = rchar();
    let stage = StageHandle::load(StageSpec {
        window: ModelWindow { use_mmap: false, ..ModelWindow::layers(&path, b, e) },
        context: ContextParams { n_ctx: 128, n_batch: 8, n_ubatch: 8, n_threads: 2, n_seq_max: 1, exact: false },
    })
    .unwrap();
    let n_embd = stage.info().n_embd;
    let batch = Batch {
        input: BatchInput::Hidden(vec![0.1; 4 * n_embd]),
        pos: vec![0, 1, 2, 3],
        seq: vec![0; 4],
        output: vec![true; 4],
        spec: Default::default(),
    };
    stage.decode(batch, false, false).await.unwrap();
    let read = rchar() - before;

    // our header parse + llama.cpp's header parse + small reads (e.g. /proc, /sys) as margin
    let allowed = window + 2 * header + (256 << 10);
    println!(
        "window [{b},{e}) = {window} bytes of {file_size} in the file; header {header}; read {read} bytes (allowed {allowed})"
    );
    assert!(read >= window, "read {read} bytes, less than the window's {window}: the measurement is broken");
    assert!(read <= allowed, "read {read} bytes, more than the window's {window} + margin");
}
