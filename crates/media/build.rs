//! Records whether `nasm` was available, because openh264's build silently drops its
//! assembly (several times slower) without it. The host warns at start-up.
fn main() {
    let nasm = std::process::Command::new(std::env::var("NASM").unwrap_or_else(|_| "nasm".into()))
        .arg("-v")
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    let disabled = std::env::var_os("OPENH264_NO_ASM").is_some();
    println!("cargo:rustc-env=CLOUDPLAY_H264_ASM={}", nasm && !disabled);
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=OPENH264_NO_ASM");
}
