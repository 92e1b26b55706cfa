fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(128);
    let options = nnunet_data::phantom::PhantomOptions {
        size,
        pixel_spacing: 2.8 * 128.0 / size as f64,
        ..Default::default()
    };
    nnunet_data::phantom::write_dataset(std::path::Path::new(&args[1]), &options, 7, 24, 6).unwrap();
}
