//! Adapter listing, device creation, byte accounting and pipeline caching.

mod common;

use pio_gpu::{
    list_adapters, DeviceKind, DeviceOptions, Epilogue, Gpu, GpuError, Linear, LinearShape,
    RowTile, WeightDtype,
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
