//! Entry points must never panic: without a driver they return
//! `DriverMissing`, without a device `NoDevice`, and with a device they work.

use std::panic::catch_unwind;

use plasticity_cuda::{available, device_count, driver_present, probe, CudaError, Gpu};

/// Run `f`, failing the test with a clear message if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T + std::panic::UnwindSafe) -> T {
    catch_unwind(f).unwrap_or_else(|_| panic!("{what} panicked; it must return an error instead"))
}

#[test]
fn entry_points_return_errors_not_panics() {
    let driver = no_panic("driver_present", driver_present);
    let avail = no_panic("available", available);
    let count = no_panic("device_count", device_count);
    let info = no_panic("probe", probe);
    let gpu = no_panic("Gpu::open(0)", || Gpu::open(0));

    if !driver {
        println!("no CUDA driver: checking the error path");
        assert!(!avail);
        assert_eq!(count, Err(CudaError::DriverMissing));
        assert_eq!(info, Err(CudaError::DriverMissing));
        assert_eq!(gpu.unwrap_err(), CudaError::DriverMissing);
        return;
    }

    match count {
        Ok(0) | Err(CudaError::NoDevice) => {
            println!("CUDA driver but no device: checking NoDevice");
            assert!(!avail);
            assert_eq!(info, Err(CudaError::NoDevice));
            assert_eq!(gpu.unwrap_err(), CudaError::NoDevice);
        }
        Ok(n) => {
            let info = info.expect("probe() must succeed when a device is present");
            println!("device 0: {info:?} ({n} devices)");
            assert_eq!(info.ordinal, 0);
            assert!(info.compute_capability.0 >= 3, "{info:?}");
            assert!(info.total_memory > 0);
            let gpu = gpu.expect("Gpu::open(0) must succeed when a device is present");
            assert_eq!(gpu.info(), &info);
            gpu.synchronize().unwrap();
            let bad = no_panic("Gpu::open(count)", move || Gpu::open(n));
            assert_eq!(
                bad.unwrap_err(),
                CudaError::BadOrdinal {
                    ordinal: n,
                    count: n
                }
            );
        }
        Err(e) => panic!("device_count failed with a driver present: {e}"),
    }
}

#[test]
fn errors_render_readably() {
    assert_eq!(
        CudaError::DriverMissing.to_string(),
        "CUDA driver library (libcuda) not found"
    );
    let e = CudaError::Compile {
        kernel: "k".into(),
        log: "bad".into(),
    };
    assert!(e.to_string().contains("\"k\"") && e.to_string().contains("bad"));
}
