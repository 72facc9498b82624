//! The libretro ABI as a frontend sees it: constants, the C structures cores fill in,
//! the callback types, and the core's entry points resolved from its library.

use std::ffi::{c_char, c_uint, c_void};

use libloading::Library;

pub(crate) const RETRO_API_VERSION: c_uint = 1;
pub(crate) const DEVICE_JOYPAD: c_uint = 1;
pub(crate) const DEVICE_ANALOG: c_uint = 5;
pub(crate) const DEVICE_ID_JOYPAD_MASK: c_uint = 256;
pub(crate) const MEMORY_SAVE_RAM: c_uint = 0;
pub(crate) const ENVIRONMENT_EXPERIMENTAL: c_uint = 0x10000;

pub(crate) mod env {
    use std::ffi::c_uint;
    pub const GET_OVERSCAN: c_uint = 2;
    pub const GET_CAN_DUPE: c_uint = 3;
    pub const SHUTDOWN: c_uint = 7;
    pub const SET_PERFORMANCE_LEVEL: c_uint = 8;
    pub const GET_SYSTEM_DIRECTORY: c_uint = 9;
    pub const SET_PIXEL_FORMAT: c_uint = 10;
    pub const SET_INPUT_DESCRIPTORS: c_uint = 11;
    pub const GET_RUMBLE_INTERFACE: c_uint = 23;
    pub const GET_VARIABLE: c_uint = 15;
    pub const SET_VARIABLES: c_uint = 16;
    pub const GET_VARIABLE_UPDATE: c_uint = 17;
    pub const SET_SUPPORT_NO_GAME: c_uint = 18;
    pub const GET_SAVE_DIRECTORY: c_uint = 31;
    pub const SET_SYSTEM_AV_INFO: c_uint = 32;
    pub const SET_SUBSYSTEM_INFO: c_uint = 34;
    pub const SET_CONTROLLER_INFO: c_uint = 35;
    pub const SET_MEMORY_MAPS: c_uint = 36;
    pub const SET_GEOMETRY: c_uint = 37;
    pub const GET_LANGUAGE: c_uint = 39;
    pub const SET_SERIALIZATION_QUIRKS: c_uint = 44;
    pub const GET_AUDIO_VIDEO_ENABLE: c_uint = 47;
    pub const GET_INPUT_BITMASKS: c_uint = 51;
    pub const GET_CORE_OPTIONS_VERSION: c_uint = 52;
}

/// `retro_rumble_interface`: the core sets a port's strong (0) or weak (1) motor.
#[repr(C)]
pub(crate) struct RumbleInterface {
    pub(crate) set_rumble_state: unsafe extern "C" fn(port: c_uint, effect: c_uint, strength: u16) -> bool,
}

#[repr(C)]
pub(crate) struct SystemInfo {
    pub(crate) library_name: *const c_char,
    pub(crate) library_version: *const c_char,
    pub(crate) valid_extensions: *const c_char,
    pub(crate) need_fullpath: bool,
    pub(crate) block_extract: bool,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GameGeometry {
    pub(crate) base_width: c_uint,
    pub(crate) base_height: c_uint,
    pub(crate) max_width: c_uint,
    pub(crate) max_height: c_uint,
    pub(crate) aspect_ratio: f32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemTiming {
    pub(crate) fps: f64,
    pub(crate) sample_rate: f64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemAvInfo {
    pub(crate) geometry: GameGeometry,
    pub(crate) timing: SystemTiming,
}

#[repr(C)]
pub(crate) struct GameInfo {
    pub(crate) path: *const c_char,
    pub(crate) data: *const c_void,
    pub(crate) size: usize,
    pub(crate) meta: *const c_char,
}

#[repr(C)]
pub(crate) struct Variable {
    pub(crate) key: *const c_char,
    pub(crate) value: *const c_char,
}

pub(crate) type EnvironmentFn = unsafe extern "C" fn(c_uint, *mut c_void) -> bool;
pub(crate) type VideoRefreshFn = unsafe extern "C" fn(*const c_void, c_uint, c_uint, usize);
pub(crate) type AudioSampleFn = unsafe extern "C" fn(i16, i16);
pub(crate) type AudioSampleBatchFn = unsafe extern "C" fn(*const i16, usize) -> usize;
pub(crate) type InputPollFn = unsafe extern "C" fn();
pub(crate) type InputStateFn = unsafe extern "C" fn(c_uint, c_uint, c_uint, c_uint) -> i16;

/// The core's entry points, resolved once.
pub(crate) struct CoreApi {
    pub(crate) init: unsafe extern "C" fn(),
    pub(crate) deinit: unsafe extern "C" fn(),
    pub(crate) api_version: unsafe extern "C" fn() -> c_uint,
    pub(crate) get_system_info: unsafe extern "C" fn(*mut SystemInfo),
    pub(crate) get_system_av_info: unsafe extern "C" fn(*mut SystemAvInfo),
    pub(crate) set_environment: unsafe extern "C" fn(EnvironmentFn),
    pub(crate) set_video_refresh: unsafe extern "C" fn(VideoRefreshFn),
    pub(crate) set_audio_sample: unsafe extern "C" fn(AudioSampleFn),
    pub(crate) set_audio_sample_batch: unsafe extern "C" fn(AudioSampleBatchFn),
    pub(crate) set_input_poll: unsafe extern "C" fn(InputPollFn),
    pub(crate) set_input_state: unsafe extern "C" fn(InputStateFn),
    pub(crate) set_controller_port_device: unsafe extern "C" fn(c_uint, c_uint),
    pub(crate) run: unsafe extern "C" fn(),
    pub(crate) serialize_size: unsafe extern "C" fn() -> usize,
    pub(crate) serialize: unsafe extern "C" fn(*mut c_void, usize) -> bool,
    pub(crate) unserialize: unsafe extern "C" fn(*const c_void, usize) -> bool,
    pub(crate) load_game: unsafe extern "C" fn(*const GameInfo) -> bool,
    pub(crate) unload_game: unsafe extern "C" fn(),
    pub(crate) get_memory_data: unsafe extern "C" fn(c_uint) -> *mut c_void,
    pub(crate) get_memory_size: unsafe extern "C" fn(c_uint) -> usize,
}

impl CoreApi {
    pub(crate) fn resolve(library: &Library) -> Result<CoreApi, String> {
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the libretro ABI fixes each symbol's C signature, which is the
                // field type this symbol is stored as.
                *unsafe { library.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|_| format!("missing symbol {}", $name))?
            };
        }
        Ok(CoreApi {
            init: symbol!("retro_init"),
            deinit: symbol!("retro_deinit"),
            api_version: symbol!("retro_api_version"),
            get_system_info: symbol!("retro_get_system_info"),
            get_system_av_info: symbol!("retro_get_system_av_info"),
            set_environment: symbol!("retro_set_environment"),
            set_video_refresh: symbol!("retro_set_video_refresh"),
            set_audio_sample: symbol!("retro_set_audio_sample"),
            set_audio_sample_batch: symbol!("retro_set_audio_sample_batch"),
            set_input_poll: symbol!("retro_set_input_poll"),
            set_input_state: symbol!("retro_set_input_state"),
            set_controller_port_device: symbol!("retro_set_controller_port_device"),
            run: symbol!("retro_run"),
            serialize_size: symbol!("retro_serialize_size"),
            serialize: symbol!("retro_serialize"),
            unserialize: symbol!("retro_unserialize"),
            load_game: symbol!("retro_load_game"),
            unload_game: symbol!("retro_unload_game"),
            get_memory_data: symbol!("retro_get_memory_data"),
            get_memory_size: symbol!("retro_get_memory_size"),
        })
    }
}
