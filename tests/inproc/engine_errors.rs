//! Refusals are typed errors with a reason, never a crash.

use crate::common;

use exo::engine::{self, Batch, BatchInput, ContextParams, Device, EngineError, ModelWindow, StageHandle, StageSpec};
use exo::gguf::{GgufWriter, TensorSpec, Value};

fn ctx() -> ContextParams {
    ContextParams { n_ctx: 256, n_batch: 64, n_ubatch: 64, n_threads: 2, n_seq_max: 1, exact: false }
}

fn load(window: ModelWindow) -> Result<StageHandle, EngineError> {
    StageHandle::load(StageSpec { window, context: ctx() })
}

#[test]
fn linked_llama_cpp_has_current_patches() {
    engine::init().unwrap();
    engine::check_patches().unwrap();
}

#[tokio::test]
async fn later_stage_refuses_tokens_and_first_stage_refuses_hidden_states() {
    let path = common::model("tiny-llama");
    let later = load(ModelWindow::layers(&path, 4, 8)).unwrap();
    let b = Batch {
        input: BatchInput::Tokens(vec![1, 2]),
        pos: vec![0, 1],
        seq: vec![0, 0],
        output: vec![true, true],
        spec: Default::default(),
    };
    let err = later.decode(b, true, false).await.unwrap_err();
    assert!(matches!(err, EngineError::TokensOnLaterStage { begin: 4, end: 8 }), "{err}");
    assert!(err.to_string().contains("hidden states"), "{err}");

    let first = load(ModelWindow::layers(&path, 0, 4)).unwrap();
    let n_embd = first.info().n_embd;
    let b = Batch {
        input: BatchInput::Hidden(vec![0.0; n_embd]),
        pos: vec![0],
        seq: vec![0],
        output: vec![true],
        spec: Default::default(),
    };
    assert!(matches!(first.decode(b, false, false).await, Err(EngineError::HiddenOnFirstStage)));

    // wrong hidden width and out-of-vocabulary tokens are refused, and the stages keep working
    let b = Batch {
        input: BatchInput::Hidden(vec![0.0; 3]),
        pos: vec![0],
        seq: vec![0],
        output: vec![true],
        spec: Default::default(),
    };
    assert!(matches!(later.decode(b, false, false).await, Err(EngineError::InvalidBatch { .. })));
    let b = Batch {
        input: BatchInput::Tokens(vec![1_000_000]),
        pos: vec![0],
        seq: vec![0],
        output: vec![true],
        spec: Default::default(),
    };
    assert!(matches!(first.decode(b, false, false).await, Err(EngineError::InvalidBatch { .. })));
    let b = Batch {
        input: BatchInput::Tokens(vec![1, 2]),
        pos: vec![0, 1],
        seq: vec![0, 0],
        output: vec![true, true],
        spec: Default::default(),
    };
    assert!(first.decode(b, false, false).await.is_ok());
}

/// A stage asked for a device this build or machine lacks is refused with the devices there
/// are; the CPU can always be chosen, by kind or by name.
#[test]
fn devices_are_chosen_per_stage_and_unknown_ones_refused() {
    let path = common::model("tiny-llama");
    let err = load(ModelWindow { device: Device::Named("NoSuchGPU7".into()), ..ModelWindow::layers(&path, 0, 4) })
        .err()
        .expect("must fail");
    assert!(matches!(&err, EngineError::UnknownDevice { name, .. } if name == "NoSuchGPU7"), "{err}");
    assert!(err.to_string().contains("NoSuchGPU7") && err.to_string().contains("CPU"), "{err}");
    for device in [Device::Cpu, Device::Named("cpu".into())] {
        let s = load(ModelWindow { device, ..ModelWindow::layers(&path, 4, 8) }).unwrap();
        assert_eq!(s.info().device, "CPU");
    }
}

#[test]
fn out_of_range_windows_are_refused() {
    let path = common::model("tiny-llama");
    for (b, e) in [(0, 9), (4, 4), (5, 3), (8, 9)] {
        let err = load(ModelWindow::layers(&path, b, e)).err().expect("must fail");
        assert!(matches!(err, EngineError::InvalidRange { n_layer: 8, .. }), "[{b},{e}): {err}");
        assert!(err.to_string().contains("8 layers"), "{err}");
    }
}

#[test]
fn missing_file_is_refused() {
    let err = load(ModelWindow::full("/nonexistent/model.gguf")).err().unwrap();
    assert!(matches!(err, EngineError::NotFound { .. }), "{err}");
}

#[test]
fn truncated_and_corrupt_files_are_refused() {
    let src = std::fs::read(common::model("tiny-llama")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.gguf");

    std::fs::write(&p, &src[..src.len() / 2]).unwrap();
    let err = load(ModelWindow::full(&p)).err().unwrap();
    assert!(err.to_string().contains("truncated"), "{err}");

    std::fs::write(&p, &src[..100]).unwrap();
    let err = load(ModelWindow::layers(&p, 2, 4)).err().unwrap();
    assert!(err.to_string().contains("truncated"), "{err}");

    let mut bad = src.clone();
    bad[..4].copy_from_slice(b"GGXX");
    std::fs::write(&p, &bad).unwrap();
    let err = load(ModelWindow::full(&p)).err().unwrap();
    assert!(err.to_string().contains("not a GGUF"), "{err}");

    // a metadata string length far beyond the file
    let mut bad = src;
    bad[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, &bad).unwrap();
    let err = load(ModelWindow::full(&p)).err().unwrap();
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn unsupported_architecture_carries_llama_cpp_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("alien.gguf");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str("alien-net".into()));
    w.set("alien-net.block_count", Value::U32(2));
    w.set("alien-net.embedding_length", Value::U32(32));
    w.add_tensor(TensorSpec { name: "blk.0.w.weight".into(), dims: vec![32, 32], type_id: 0 });
    w.add_tensor(TensorSpec { name: "blk.1.w.weight".into(), dims: vec![32, 32], type_id: 0 });
    w.write(&p, |t, out| std::io::Write::write_all(out, &vec![0u8; t.bytes() as usize])).unwrap();
    for window in [ModelWindow::full(&p), ModelWindow::layers(&p, 1, 2)] {
        let err = load(window).err().unwrap();
        assert!(matches!(err, EngineError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("alien-net"), "{err}");
    }
}

#[test]
fn invalid_sampling_parameters_are_refused() {
    use exo::engine::SamplingParams;
    for p in [
        SamplingParams { temperature: 1e9, ..Default::default() },
        SamplingParams { temperature: -1.0, ..Default::default() },
        SamplingParams { top_p: 0.0, ..Default::default() },
        SamplingParams { repeat_penalty: f32::NAN, ..Default::default() },
    ] {
        assert!(matches!(p.validate(), Err(EngineError::Sampling { .. })), "{p:?}");
    }
}

/// A sequence id the context does not hold made llama.cpp abort the process (GGML_ASSERT in
/// seq_rm and seq_pos_max), reachable by any peer through a `SeqOp::Remove`: now refused. Hostile
/// speculation (drafts for another number of rows, trims of unknown sequences) is an error too.
#[tokio::test]
async fn unknown_sequences_and_hostile_speculation_are_refused_not_fatal() {
    let stage = load(ModelWindow::full(common::model("tiny-llama"))).unwrap();
    assert!(!stage.seq_rm(999, 0, -1).await.unwrap());
    assert!(!stage.seq_rm(-7, 0, -1).await.unwrap());
    assert_eq!(stage.seq_pos_max(999).await.unwrap(), -1);
    assert_eq!(stage.seq_pos_max(-1).await.unwrap(), -1);
    let batch = |spec: engine::Speculation| Batch {
        input: BatchInput::Tokens(vec![1, 2]),
        pos: vec![0, 1],
        seq: vec![0, 0],
        output: vec![true, true],
        spec,
    };
    for bad in [
        engine::Speculation { draft: vec![3], trim: vec![] },
        engine::Speculation { draft: vec![], trim: vec![(5, 0)] },
        engine::Speculation { draft: vec![3, -9], trim: vec![] },
    ] {
        let err = stage.decode(batch(bad.clone()), true, false).await.unwrap_err();
        assert!(matches!(err, EngineError::InvalidBatch { .. }), "{bad:?}: {err}");
    }
    // and the stage still decodes (the seq_rm of sequence 0 works)
    stage.decode(batch(engine::Speculation::default()), true, false).await.unwrap();
    assert!(stage.seq_rm(0, 1, -1).await.unwrap());
    assert_eq!(stage.seq_pos_max(0).await.unwrap(), 0);
}
