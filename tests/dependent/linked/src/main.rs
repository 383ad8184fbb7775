//! Reports, one `key=value` per line, what the process loaded of libtorch, and computes with it.
//!
//! `report` asks nothing that would load CUDA; `init` calls `tch_rpo::libtorch::init_cuda()` first; `late`
//! asks libtorch about CUDA first and then calls `init_cuda()` (which must then fail).
use tch::{Device, Kind, Tensor};

fn main() -> tch_rpo::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "report".into());
    match mode.as_str() {
        "report" => {}
        "init" => {
            tch_rpo::libtorch::init_cuda()?;
        }
        "late" => {
            println!("cuda_available_before={}", tch::Cuda::is_available());
            match tch_rpo::libtorch::init_cuda() {
                Ok(_) => println!("late_init=ok"),
                Err(e) => println!("late_init=error: {e}"),
            }
        }
        other => panic!("unknown mode {other}: expected report, init or late"),
    }
    let info = tch_rpo::libtorch::info()?;
    let dir = info.lib_dir.as_ref().map(|d| d.display().to_string());
    println!("lib_dir={}", dir.unwrap_or_default());
    println!("build_lib_dir={}", tch_rpo::libtorch::BUILD_LIB_DIR);
    println!("cuda_build={}", info.cuda_build);
    println!("cuda_loaded={}", info.cuda_loaded);
    println!("cuda_registered={}", info.cuda_registered);
    println!("cuda_devices={}", info.cuda_devices);
    let sum = Tensor::f_arange(4, (Kind::Float, Device::Cpu))?.f_sum(Kind::Float)?;
    println!("sum={}", f64::try_from(&sum).map_err(tch_rpo::Error::Torch)?);
    Ok(())
}
