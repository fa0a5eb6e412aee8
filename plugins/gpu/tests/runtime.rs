//! Adapter listing, device creation, byte accounting and pipeline caching.

use pio_gpu::testing as common;

use pio_gpu::{
    list_adapters, DeviceKind, DeviceOptions, Epilogue, Gpu, GpuError, Kernel, KvCache, KvShape,
    KvType, Linear, LinearShape, Reduction, RopeTable, RowTile, Staging, TimingMethod, TokenRange,
    WeightDtype, KV_BLOCK_ROWS,
};

#[test]
fn lists_at_least_one_adapter() {
    let adapters = list_adapters();
    assert!(
        !adapters.is_empty(),
        "no wgpu adapter: GPU tests need one (lavapipe is enough)"
    );
    for adapter in &adapters {
        println!("adapter: {adapter}");
        assert!(!adapter.name.is_empty());
        assert!(adapter.to_string().contains(&adapter.name));
        let json = serde_json::to_value(adapter).expect("serialize adapter info");
        assert_eq!(json["name"], adapter.name.as_str());
        assert_eq!(json["backend"], adapter.backend.as_str());
        assert!(json["device_type"].is_string(), "{json}");
    }
}

#[test]
fn selects_adapters_by_name_and_index() {
    let gpu = common::gpu();
    let name = gpu.adapter_info().name.clone();
    println!("default adapter: {}", gpu.adapter_info());

    let fragment = name.to_uppercase();
    let by_name = Gpu::new(&DeviceOptions {
        adapter: Some(fragment[..fragment.len().min(6)].to_owned()),
        ..Default::default()
    })
    .expect("device by name fragment");
    assert_eq!(by_name.adapter_info().name, name);

    let index = list_adapters()
        .iter()
        .position(|a| a.name == name)
        .expect("listed");
    let by_index = Gpu::new(&DeviceOptions {
        adapter: Some(index.to_string()),
        ..Default::default()
    })
    .expect("device by index");
    assert_eq!(by_index.adapter_info().name, name);

    let missing = Gpu::new(&DeviceOptions {
        adapter: Some("no such adapter".to_owned()),
        ..Default::default()
    });
    assert!(
        matches!(missing, Err(GpuError::AdapterNotFound { .. })),
        "{missing:?}"
    );
}

#[test]
fn counts_allocated_bytes() {
    let gpu = common::gpu();
    assert_eq!(gpu.allocated_bytes(), 0);
    let a = gpu.storage_zeroed("a", 4096).unwrap();
    let b = gpu.storage_from("b", &[1.0f32; 300]).unwrap();
    assert_eq!(gpu.allocated_bytes(), 4096 + 1200);
    {
        let readback = gpu.read_f32(&b).unwrap();
        assert_eq!(readback, vec![1.0; 300]);
    }
    drop(a);
    assert_eq!(gpu.allocated_bytes(), 1200);
    let weights =
        pio_gpu::QuantMatrix::upload(&gpu, WeightDtype::Q8_0, 2, 64, &[0u8; 2 * 68]).unwrap();
    // Q8_0 repacks 34-byte blocks into 9 words (36 bytes); rows are padded to a group of 8:
    // 8 rows of 2 blocks.
    assert_eq!(gpu.allocated_bytes(), 1200 + 8 * 2 * 36);
    drop(weights);
    drop(b);
    assert_eq!(gpu.allocated_bytes(), 0);
    assert!(gpu.peak_allocated_bytes() >= 4096 + 1200);
}

#[test]
fn rejects_buffers_over_the_binding_limit() {
    let gpu = common::gpu();
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let error = gpu.storage_zeroed("huge", limit + 4).unwrap_err();
    assert!(matches!(error, GpuError::BufferTooLarge { .. }), "{error}");
    assert_eq!(gpu.allocated_bytes(), 0);
}

#[test]
fn caches_pipelines_by_shape() {
    let gpu = common::gpu();
    let shape = LinearShape {
        dtype: WeightDtype::Q4_0,
        rows: 64,
        cols: 64,
        norm_eps: None,
        tile: RowTile::decode(DeviceKind::Cpu),
    };
    Linear::new(&gpu, shape, Epilogue::Store).unwrap();
    Linear::new(&gpu, shape, Epilogue::Store).unwrap();
    assert_eq!(gpu.pipeline_count(), 1);
    Linear::new(&gpu, LinearShape { rows: 96, ..shape }, Epilogue::Store).unwrap();
    assert_eq!(gpu.pipeline_count(), 2);
    Linear::new(&gpu, shape, Epilogue::Accumulate).unwrap();
    assert_eq!(gpu.pipeline_count(), 3);
}

/// `Gpu::profile` runs the dispatches in order, computing what `Gpu::run` computes, and times
/// each one, named by kernel and shape (by device timestamps where the adapter has them:
/// lavapipe does).
#[test]
fn profiles_each_dispatch_in_order() {
    let gpu = common::gpu();
    let mut rng = common::rng(11);
    let (dtype, rows, cols) = (WeightDtype::Q4_0, 24, 64);
    let raw = common::random_gguf(&mut rng, dtype, rows, cols);
    let weights = pio_gpu::QuantMatrix::upload(&gpu, dtype, rows, cols, &raw).unwrap();
    let x = gpu
        .storage_from("x", &common::random_f32(&mut rng, cols, 1.0))
        .unwrap();
    let out = gpu.storage_zeroed("out", rows as u64 * 4).unwrap();
    let shape = LinearShape {
        dtype,
        rows: rows as u32,
        cols: cols as u32,
        norm_eps: None,
        tile: RowTile::decode(DeviceKind::Cpu),
    };
    let bind = |epilogue| {
        Linear::new(&gpu, shape, epilogue)
            .unwrap()
            .bind(&gpu, &weights, &x, None, &out, TokenRange::all(1))
            .unwrap()
    };
    let (store, accumulate) = (bind(Epilogue::Store), bind(Epilogue::Accumulate));
    gpu.run(&[&store]).unwrap();
    let once = gpu.read_f32(&out).unwrap();

    let profile = gpu.profile(&[&store, &accumulate]).unwrap();
    let twice = gpu.read_f32(&out).unwrap();
    let doubled: Vec<f32> = once.iter().map(|v| 2.0 * v).collect();
    assert_eq!(twice, doubled, "store, then accumulate");
    let names: Vec<&str> = profile
        .dispatches
        .iter()
        .map(|d| d.kernel.as_str())
        .collect();
    assert_eq!(names, ["linear q4_0 24x64"; 2]);
    // A split variant is named in profiles.
    let split = LinearShape {
        tile: RowTile {
            tokens: 1,
            workgroup_size: 64,
            reduction: Reduction::Workgroup { lanes: 8 },
            staging: Staging::None,
        },
        ..shape
    };
    let split = Linear::new(&gpu, split, Epilogue::Store)
        .unwrap()
        .bind(&gpu, &weights, &x, None, &out, TokenRange::all(1))
        .unwrap();
    assert_eq!(split.name(), "linear q4_0 24x64 workgroup/8");
    assert!(profile
        .dispatches
        .iter()
        .all(|d| d.ms.is_finite() && d.ms >= 0.0));
    let kernels = profile.by_kernel();
    assert_eq!((kernels.len(), kernels[0].calls), (1, 2));
    let timestamps = gpu
        .features()
        .contains(pio_gpu::wgpu::Features::TIMESTAMP_QUERY);
    let expected = match timestamps {
        true => TimingMethod::Timestamps,
        false => TimingMethod::SubmitAndWait,
    };
    assert_eq!(profile.method, expected);
    println!("{profile:?}");
}

const FILL_ONE: &str = "@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(1) fn main() { out[0] = 1.0; }";
const FILL_TWO: &str = "@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(1) fn main() { out[0] = 2.0; }";

/// Runs `kernel`'s `main` on a fresh 4-element buffer and returns element 0.
fn run_fill(gpu: &Gpu, kernel: Kernel) -> f32 {
    let pipeline = gpu.pipeline(kernel, "main", &[]).unwrap();
    let out = gpu.storage_zeroed("out", 16).unwrap();
    let dispatch = gpu.bind("fill", &pipeline, &[&out], [1, 1, 1]).unwrap();
    gpu.run(&[&dispatch]).unwrap();
    gpu.read_f32(&out).unwrap()[0]
}

#[test]
fn kernels_sharing_a_name_keep_their_own_source() {
    let gpu = common::gpu();
    // Two kernels with one name and different sources: each runs its own code, in either order
    // and again after both are cached.
    let one = Kernel {
        name: "fill",
        source: FILL_ONE,
    };
    let two = Kernel {
        name: "fill",
        source: FILL_TWO,
    };
    assert_eq!(run_fill(&gpu, one), 1.0);
    assert_eq!(run_fill(&gpu, two), 2.0);
    assert_eq!(run_fill(&gpu, one), 1.0);
    assert_eq!(gpu.pipeline_count(), 2);
    // A plugin kernel named like one of this crate's ("attention") after that one was compiled.
    pio_gpu::Attention::new(
        &gpu,
        pio_gpu::AttentionConfig {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 8,
            q: pio_gpu::RowLayout::contiguous(16),
            window: None,
            kv_type: pio_gpu::KvType::F32,
        },
    )
    .unwrap();
    assert_eq!(
        run_fill(
            &gpu,
            Kernel {
                name: "attention_kv_f32",
                source: FILL_TWO,
            }
        ),
        2.0
    );
}

#[test]
fn absurd_position_counts_fail_before_allocating() {
    let gpu = common::gpu();
    // 2^32 - 1 positions of 64-wide heads would be a 1 TiB host table and device buffer: the
    // device limit refuses it before anything is allocated (the process must not abort).
    let error = RopeTable::new(&gpu, 64, 10_000.0, u32::MAX).unwrap_err();
    let table_bytes = u64::from(u32::MAX) * 64 * 4;
    assert!(
        matches!(error, GpuError::BufferTooLarge { size, .. } if size == table_bytes),
        "{error}"
    );
    let shape = KvShape::uniform(30, 8, 64, KvType::F16);
    let error = KvCache::new(&gpu, shape, u32::MAX).unwrap_err();
    assert!(matches!(error, GpuError::BufferTooLarge { .. }), "{error}");
    assert_eq!(gpu.allocated_bytes(), 0);
    assert_eq!(gpu.peak_allocated_bytes(), 0);
}

#[test]
fn runtime_types_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Gpu>();
    assert_send_sync::<pio_gpu::GpuBuffer>();
    assert_send_sync::<pio_gpu::QuantMatrix>();
    assert_send_sync::<pio_gpu::Dispatch>();
    assert_send_sync::<Linear>();
    assert_send_sync::<pio_gpu::KvCache>();
}

/// Layers of different widths (a model with heads removed layer by layer) each copy their own
/// rows.
#[test]
fn copying_blocks_copies_their_first_rows_in_every_layer() {
    let gpu = common::gpu();
    for kv_type in KvType::ALL {
        let blocks = 3u32;
        let shape = KvShape {
            kv_heads: vec![2, 1],
            head_dim: 4,
            kv_type,
        };
        let cache = KvCache::new(&gpu, shape.clone(), blocks).unwrap();
        assert_eq!(cache.bytes(), shape.block_bytes() * u64::from(blocks));
        assert_eq!(
            shape.block_bytes(),
            2 * 16 * (8 + 4) * kv_type.bytes_per_value()
        );
        let kv_dims = [8usize, 4];
        let mut rng = common::rng(5);
        let contents: Vec<(Vec<f32>, Vec<f32>)> = kv_dims
            .iter()
            .map(|kv_dim| {
                let len = blocks as usize * KV_BLOCK_ROWS as usize * kv_dim;
                let mut random =
                    || common::as_stored(kv_type, &common::random_f32(&mut rng, len, 1.0));
                (random(), random())
            })
            .collect();
        for (layer, (k, v)) in contents.iter().enumerate() {
            let layer = cache.layer(layer).unwrap();
            common::write_kv(&gpu, layer.keys, kv_type, k);
            common::write_kv(&gpu, layer.values, kv_type, v);
        }
        // Block 2's first 5 rows into block 0, and all of block 0 (before that copy) into
        // block 1: copies happen in order.
        cache.copy_blocks(&gpu, &[(0, 1, 16), (2, 0, 5)]).unwrap();
        for (layer, (k, v)) in contents.iter().enumerate() {
            let kv_dim = kv_dims[layer];
            let block_len = KV_BLOCK_ROWS as usize * kv_dim;
            let rows = |block: usize, n: usize| block * block_len..block * block_len + n * kv_dim;
            let kv = cache.layer(layer).unwrap();
            assert_eq!(kv.kv_dim as usize, kv_dim);
            for (buffer, want) in [(kv.keys, k), (kv.values, v)] {
                let got = common::read_kv(&gpu, buffer, kv_type, want.len());
                assert_eq!(got[rows(1, 16)], want[rows(0, 16)], "{kv_type:?}");
                assert_eq!(got[rows(0, 5)], want[rows(2, 5)], "{kv_type:?}");
                // The rest of block 0 and block 2 are untouched.
                assert_eq!(got[5 * kv_dim..block_len], want[5 * kv_dim..block_len]);
                assert_eq!(got[rows(2, 16)], want[rows(2, 16)], "{kv_type:?}");
            }
        }
        let error = cache.copy_blocks(&gpu, &[(0, 3, 1)]).unwrap_err();
        assert!(error.to_string().contains("3 of 16 rows"), "{error}");
    }
}
