//! Hardware video decoding of a camera's analysed stream (`[[cameras]] hwaccel`), with a
//! fallback to software that nothing about the hardware can prevent.
//!
//! ```text
//! session open ─▶ hwaccel off, or hardware given up for this camera ─▶ software decoder
//!              └▶ vaapi:   device (hwaccel_device) ─▶ decoder with hw_device_ctx + get_format
//!              └▶ v4l2m2m: h264_v4l2m2m / hevc_v4l2m2m / … by name
//!              └▶ auto:    vaapi, then v4l2m2m
//!              any failure ─▶ software decoder, reason logged (warn) once, counted, in status
//! each frame ─▶ a VAAPI surface is copied to memory (av_hwframe_transfer_data) ─▶ Converter
//! MAX_ERRORS_IN_ROW decode errors without a good frame ─▶ the session ends, the next one
//! decodes in software
//! ```
//!
//! Once a camera fell back it stays in software until it is restarted with a changed
//! configuration or the gateway restarts: a device that failed once is not trusted on the
//! alarm path again, and the reason stays visible in `status.json` (`decoder.fallback`).
//!
//! V4L2 M2M decoders write their frames to memory (NV12 or YUV 4:2:0): the [`Converter`]
//! takes them as they are. VAAPI frames come back as NV12 after the transfer.
//!
//! [`Converter`]: super::capture

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use edge_config::HwAccel;
use ffmpeg::ffi;
use ffmpeg::format::Pixel;
use ffmpeg_next as ffmpeg;
use serde::{Deserialize, Serialize};

/// Decode errors in a row, with no good frame between them, after which a hardware session
/// ends and the camera decodes in software from its next session on. Ten: a few corrupt
/// packets of a bad network second do not cost the hardware, a decoder that fails every
/// packet is replaced within a second of a 10-25 fps stream.
pub const MAX_ERRORS_IN_ROW: u32 = 10;

/// Why a hardware decoder is not used (each is the fallback reason shown in the status).
#[derive(Debug, thiserror::Error)]
pub enum HwError {
    #[error("vaapi: device {0} does not exist")]
    NoDevice(PathBuf),
    #[error("vaapi: device path {0} contains a NUL byte")]
    DevicePath(PathBuf),
    #[error("vaapi: cannot open device {path}: {error}")]
    Device { path: PathBuf, error: ffmpeg::Error },
    #[error("{backend}: no hardware decoder for {codec:?}")]
    NoDecoder {
        backend: Backend,
        codec: ffmpeg::codec::Id,
    },
    #[error("{backend}: cannot open the {name} decoder: {error}")]
    Open {
        backend: Backend,
        name: String,
        error: ffmpeg::Error,
    },
    #[error("v4l2m2m: cannot open the {name} decoder: no /dev/video* device ({error})")]
    NoV4l2Device { name: String, error: ffmpeg::Error },
    #[error("vaapi: the device cannot decode this stream; FFmpeg chose {0:?} (software)")]
    SoftwareFormat(Pixel),
    #[error("{backend}: {count} decode errors in a row without a good frame")]
    Errors { backend: Backend, count: u32 },
}

/// The decoder a camera's analysed stream runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Software,
    Vaapi,
    V4l2m2m,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Software => "software",
            Backend::Vaapi => "vaapi",
            Backend::V4l2m2m => "v4l2m2m",
        })
    }
}

/// What a camera's configuration asks of its decoder (`hwaccel`, `hwaccel_device`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwRequest {
    pub accel: HwAccel,
    /// The VAAPI device (`vaapi` and `auto`).
    pub vaapi_device: PathBuf,
}

impl Default for HwRequest {
    fn default() -> Self {
        HwRequest {
            accel: HwAccel::Off,
            vaapi_device: PathBuf::from(HwAccel::DEFAULT_VAAPI_DEVICE),
        }
    }
}

impl HwRequest {
    pub fn for_camera(camera: &edge_config::Camera) -> Self {
        HwRequest {
            accel: camera.hwaccel,
            vaapi_device: camera.vaapi_device(),
        }
    }

    /// The hardware decoders to try, in order.
    fn candidates(&self) -> &'static [Backend] {
        match self.accel {
            HwAccel::Off => &[],
            HwAccel::Auto => &[Backend::Vaapi, Backend::V4l2m2m],
            HwAccel::Vaapi => &[Backend::Vaapi],
            HwAccel::V4l2m2m => &[Backend::V4l2m2m],
        }
    }
}

/// A camera's decoder as `status.json` shows it (fields missing in older files read as
/// their defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecoderStatus {
    /// What the configuration asks (`hwaccel`).
    pub requested: HwAccel,
    /// The decoder of the current (or latest) session.
    pub in_use: Backend,
    /// Why the camera decodes in software although hardware was asked for (absent: it was
    /// not, or the hardware runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Times the camera fell back to software.
    pub fallbacks: u64,
}

/// A camera's decoder state: what its status shows, and whether its hardware was given up.
/// Kept in [`super::CameraStats`] because both outlive the capture's sessions and the
/// camera's supervised restarts (a camera that fell back stays in software).
#[derive(Debug, Default)]
pub struct DecoderState {
    /// Written by the capture thread when a session opens or falls back, read by the status
    /// writer every second: a std mutex, never held across FFmpeg calls.
    status: Mutex<DecoderStatus>,
    /// Decode errors since the last good frame; atomic because every decode error bumps
    /// it from the capture's error counting, which has no access to the session.
    errors_in_row: AtomicU32,
}

impl DecoderState {
    pub fn status(&self) -> DecoderStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DecoderStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One decode error of the running session (send, receive, transfer or a corrupt
    /// frame).
    pub fn decode_error(&self) {
        self.errors_in_row.fetch_add(1, Ordering::Relaxed);
    }

    fn good_frame(&self) {
        self.errors_in_row.store(0, Ordering::Relaxed);
    }

    /// Whether hardware was given up for this camera (it decodes in software from now on).
    fn given_up(&self) -> bool {
        self.lock().fallback.is_some()
    }

    fn using(&self, requested: HwAccel, backend: Backend) {
        self.errors_in_row.store(0, Ordering::Relaxed);
        let mut st = self.lock();
        st.requested = requested;
        st.in_use = backend;
    }

    /// Hardware is given up for good: logged once (a camera falls back once), counted,
    /// shown.
    fn fall_back(&self, source: &str, requested: HwAccel, reason: String) {
        tracing::warn!(%source, hwaccel = requested.as_str(), %reason, "hardware decoding unavailable: decoding in software");
        let mut st = self.lock();
        st.requested = requested;
        st.in_use = Backend::Software;
        st.fallbacks += 1;
        st.fallback = Some(reason);
    }
}

/// Whether a session on `backend` that has seen `errors_in_row` decode errors since its last
/// good frame gives up its hardware (software sessions never do).
pub fn gives_up(backend: Backend, errors_in_row: u32) -> bool {
    backend != Backend::Software && errors_in_row >= MAX_ERRORS_IN_ROW
}

/// An open decoder of the analysed stream and what its frames need on their way to the
/// converter.
pub struct Opened {
    pub decoder: ffmpeg::decoder::Video,
    pub frames: SystemFrames,
}

/// Opens the decoder `request` asks for, else a software one; only a software decoder that
/// cannot open is an error (the camera cannot be decoded at all). `source` names the
/// camera's stream in logs (its password redacted).
pub fn open(
    params: &ffmpeg::codec::Parameters,
    request: &HwRequest,
    state: &DecoderState,
    source: String,
) -> Result<Opened, ffmpeg::Error> {
    if request.accel != HwAccel::Off && !state.given_up() {
        let mut reasons = Vec::new();
        for &backend in request.candidates() {
            match open_hardware(backend, params, request) {
                Ok(decoder) => {
                    tracing::info!(%source, decoder = %backend, "hardware decoding");
                    state.using(request.accel, backend);
                    return Ok(Opened {
                        decoder,
                        frames: SystemFrames::new(backend, source),
                    });
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        state.fall_back(&source, request.accel, reasons.join("; "));
    }
    let decoder = ffmpeg::codec::context::Context::from_parameters(params.clone())?
        .decoder()
        .video()?;
    state.using(request.accel, Backend::Software);
    Ok(Opened {
        decoder,
        frames: SystemFrames::new(Backend::Software, source),
    })
}

fn open_hardware(
    backend: Backend,
    params: &ffmpeg::codec::Parameters,
    request: &HwRequest,
) -> Result<ffmpeg::decoder::Video, HwError> {
    match backend {
        Backend::Vaapi => open_vaapi(params, &request.vaapi_device),
        Backend::V4l2m2m => open_v4l2m2m(params),
        Backend::Software => Err(HwError::NoDecoder {
            backend,
            codec: params.id(),
        }),
    }
}

/// A decoder whose frames are VAAPI surfaces on `device`.
fn open_vaapi(
    params: &ffmpeg::codec::Parameters,
    device: &Path,
) -> Result<ffmpeg::decoder::Video, HwError> {
    let backend = Backend::Vaapi;
    let codec = ffmpeg::decoder::find(params.id())
        .filter(supports_vaapi)
        .ok_or(HwError::NoDecoder {
            backend,
            codec: params.id(),
        })?;
    if !device.exists() {
        return Err(HwError::NoDevice(device.to_owned()));
    }
    let hw = HwDevice::vaapi(device)?;
    let open_error = |error| HwError::Open {
        backend,
        name: codec.name().to_owned(),
        error,
    };
    let mut context =
        ffmpeg::codec::context::Context::from_parameters(params.clone()).map_err(open_error)?;
    let reference = hw.new_ref().ok_or_else(|| {
        open_error(ffmpeg::Error::Other {
            errno: libc::ENOMEM,
        })
    })?;
    // SAFETY: `context` owns a valid, not yet opened AVCodecContext; avcodec.h says
    // hw_device_ctx and get_format are set by the user before avcodec_open2(). The context
    // takes `reference` over (avcodec_close unrefs hw_device_ctx, also when the open fails
    // and the context is freed unopened), and `pick_vaapi` is a plain function.
    unsafe {
        let ctx = context.as_mut_ptr();
        (*ctx).hw_device_ctx = reference;
        (*ctx).get_format = Some(pick_vaapi);
    }
    context
        .decoder()
        .open_as(codec)
        .and_then(|o| o.video())
        .map_err(open_error)
}

/// Whether FFmpeg's decoder `codec` can output VAAPI surfaces from a device context.
fn supports_vaapi(codec: &ffmpeg::Codec) -> bool {
    let method = ffi::AV_CODEC_HW_CONFIG_METHOD_HW_DEVICE_CTX as libc::c_int;
    (0..)
        .map_while(|i| {
            // SAFETY: `codec` wraps a valid AVCodec (static in libavcodec);
            // avcodec_get_hw_config returns NULL past the last configuration, else a pointer to
            // a static AVCodecHWConfig.
            let config = unsafe { ffi::avcodec_get_hw_config(codec.as_ptr(), i).as_ref() }?;
            Some(
                config.device_type == ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_VAAPI
                    && config.methods & method != 0,
            )
        })
        .any(|vaapi| vaapi)
}

/// FFmpeg's `get_format` in a VAAPI session: VAAPI when offered, else the first software
/// format (FFmpeg asks again without VAAPI when the device refuses the stream).
unsafe extern "C" fn pick_vaapi(
    _ctx: *mut ffi::AVCodecContext,
    formats: *const ffi::AVPixelFormat,
) -> ffi::AVPixelFormat {
    use ffi::AVPixelFormat::{AV_PIX_FMT_NONE, AV_PIX_FMT_VAAPI};
    let mut first_software = AV_PIX_FMT_NONE;
    let mut i = 0;
    loop {
        // SAFETY: avcodec.h: `formats` is a list terminated by AV_PIX_FMT_NONE, each entry
        // a pixel format of this libavcodec (the bindings come from its headers).
        let format = unsafe { *formats.add(i) };
        if format == AV_PIX_FMT_NONE {
            return first_software;
        }
        if format == AV_PIX_FMT_VAAPI {
            return format;
        }
        if first_software == AV_PIX_FMT_NONE && !is_hardware(format) {
            first_software = format;
        }
        i += 1;
    }
}

/// Whether `format` is a hardware surface (not pixels in memory).
fn is_hardware(format: ffi::AVPixelFormat) -> bool {
    // SAFETY: av_pix_fmt_desc_get takes any format and returns NULL or a static descriptor.
    let descriptor = unsafe { ffi::av_pix_fmt_desc_get(format).as_ref() };
    descriptor.is_some_and(|d| d.flags & ffi::AV_PIX_FMT_FLAG_HWACCEL as u64 != 0)
}

/// A decoder of the stream's codec that uses a V4L2 memory-to-memory device.
fn open_v4l2m2m(params: &ffmpeg::codec::Parameters) -> Result<ffmpeg::decoder::Video, HwError> {
    use ffmpeg::codec::Id;
    let backend = Backend::V4l2m2m;
    let name = match params.id() {
        Id::H264 => "h264_v4l2m2m",
        Id::HEVC => "hevc_v4l2m2m",
        Id::MPEG4 => "mpeg4_v4l2m2m",
        Id::MPEG2VIDEO => "mpeg2_v4l2m2m",
        Id::VP8 => "vp8_v4l2m2m",
        Id::VP9 => "vp9_v4l2m2m",
        codec => return Err(HwError::NoDecoder { backend, codec }),
    };
    let codec = ffmpeg::decoder::find_by_name(name).ok_or(HwError::NoDecoder {
        backend,
        codec: params.id(),
    })?;
    let open_error = |error| match has_video_devices() {
        true => HwError::Open {
            backend,
            name: name.to_owned(),
            error,
        },
        false => HwError::NoV4l2Device {
            name: name.to_owned(),
            error,
        },
    };
    ffmpeg::codec::context::Context::from_parameters(params.clone())
        .map_err(open_error)?
        .decoder()
        .open_as(codec)
        .and_then(|o| o.video())
        .map_err(open_error)
}

/// Whether any V4L2 device node (`/dev/video*`) exists: FFmpeg's V4L2 M2M decoders look
/// for theirs among them.
fn has_video_devices() -> bool {
    std::fs::read_dir("/dev").is_ok_and(|dir| {
        dir.filter_map(Result::ok)
            .any(|e| e.file_name().as_bytes().starts_with(b"video"))
    })
}

/// One reference to an FFmpeg hardware device context, released on drop.
struct HwDevice(ptr::NonNull<ffi::AVBufferRef>);

impl HwDevice {
    fn vaapi(path: &Path) -> Result<Self, HwError> {
        let name = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| HwError::DevicePath(path.to_owned()))?;
        let mut device: *mut ffi::AVBufferRef = ptr::null_mut();
        // SAFETY: `device` is a valid out-pointer, `name` a NUL-terminated string alive for
        // the call, no options (NULL), flags 0 (hwcontext.h); on failure FFmpeg frees what
        // it allocated and leaves `device` NULL.
        let status = unsafe {
            ffi::av_hwdevice_ctx_create(
                &mut device,
                ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_VAAPI,
                name.as_ptr(),
                ptr::null_mut(),
                0,
            )
        };
        let error = |error| HwError::Device {
            path: path.to_owned(),
            error,
        };
        if status < 0 {
            return Err(error(ffmpeg::Error::from(status)));
        }
        ptr::NonNull::new(device)
            .map(HwDevice)
            .ok_or_else(|| error(ffmpeg::Error::Bug))
    }

    /// A new reference to the device (for a codec context, which frees it); `None` when
    /// out of memory.
    fn new_ref(&self) -> Option<*mut ffi::AVBufferRef> {
        // SAFETY: self.0 is a valid AVBufferRef we hold; av_buffer_ref returns a new
        // reference or NULL.
        let reference = unsafe { ffi::av_buffer_ref(self.0.as_ptr()) };
        (!reference.is_null()).then_some(reference)
    }
}

impl Drop for HwDevice {
    fn drop(&mut self) {
        let mut reference = self.0.as_ptr();
        // SAFETY: we own this one reference; av_buffer_unref frees it (the device lives on
        // while a codec context holds its own) and sets the pointer to NULL.
        unsafe { ffi::av_buffer_unref(&mut reference) };
    }
}

/// Brings a session's decoded frames to system memory for the converter, and tells good
/// frames from failures for the fallback.
pub struct SystemFrames {
    backend: Backend,
    /// The camera's stream, for logs (password redacted).
    source: String,
    /// The frame VAAPI surfaces are copied into (the AVFrame is reused; its buffers are
    /// those the transfer allocates, released at the next frame).
    transfer: ffmpeg::frame::Video,
    /// A VAAPI session whose decoder chose a software format was noted as a fallback.
    noted_software: bool,
}

impl SystemFrames {
    fn new(backend: Backend, source: String) -> Self {
        SystemFrames {
            backend,
            source,
            transfer: ffmpeg::frame::Video::empty(),
            noted_software: false,
        }
    }

    /// The decoder this session runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `decoded` in system memory: itself, or its VAAPI surface copied into the reused
    /// frame (with its timestamps and flags). A good (not corrupt) frame resets the
    /// session's error run.
    pub fn system<'f>(
        &'f mut self,
        decoded: &'f ffmpeg::frame::Video,
        state: &DecoderState,
    ) -> Result<&'f ffmpeg::frame::Video, ffmpeg::Error> {
        let frame = if decoded.format() == Pixel::VAAPI {
            self.transfer_from(decoded)?;
            &self.transfer
        } else {
            if self.backend == Backend::Vaapi && !self.noted_software {
                // FFmpeg's get_format fell back to software (the device refused the profile).
                self.noted_software = true;
                let reason = HwError::SoftwareFormat(decoded.format()).to_string();
                state.fall_back(&self.source, state.status().requested, reason);
            }
            decoded
        };
        if !frame.is_corrupt() && !frame.has_decode_errors() {
            state.good_frame();
        }
        Ok(frame)
    }

    fn transfer_from(&mut self, decoded: &ffmpeg::frame::Video) -> Result<(), ffmpeg::Error> {
        // SAFETY: both are valid AVFrames owned by their wrappers; `decoded` is a VAAPI
        // frame with its hw_frames_ctx (hwcontext.h: the source of a transfer must have
        // one). `transfer` is unreferenced first, so the transfer allocates its buffers
        // (a "clean" destination) and copy_props finds no side data of an earlier frame.
        let status = unsafe {
            let dst = self.transfer.as_mut_ptr();
            ffi::av_frame_unref(dst);
            match ffi::av_hwframe_transfer_data(dst, decoded.as_ptr(), 0) {
                0 => ffi::av_frame_copy_props(dst, decoded.as_ptr()),
                e => e,
            }
        };
        if status < 0 {
            return Err(ffmpeg::Error::from(status));
        }
        Ok(())
    }

    /// After a decode error: whether this hardware session gives up (the camera then
    /// decodes in software from its next session on; the reason is logged and shown).
    pub fn give_up(&self, state: &DecoderState) -> bool {
        let count = state.errors_in_row.load(Ordering::Relaxed);
        if !gives_up(self.backend, count) || state.given_up() {
            return false;
        }
        let reason = HwError::Errors {
            backend: self.backend,
            count,
        };
        state.fall_back(&self.source, state.status().requested, reason.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_hardware_session_with_max_errors_in_a_row_gives_up() {
        assert!(!gives_up(Backend::Vaapi, MAX_ERRORS_IN_ROW - 1));
        assert!(gives_up(Backend::Vaapi, MAX_ERRORS_IN_ROW));
        assert!(gives_up(Backend::V4l2m2m, MAX_ERRORS_IN_ROW + 5));
        assert!(
            !gives_up(Backend::Software, 1000),
            "software never gives up"
        );
    }

    #[test]
    fn a_good_frame_resets_the_run_of_errors_and_the_fallback_is_counted_once() {
        let state = DecoderState::default();
        state.using(HwAccel::Vaapi, Backend::Vaapi);
        let frames = SystemFrames::new(Backend::Vaapi, "cam.mp4".into());
        for _ in 0..MAX_ERRORS_IN_ROW - 1 {
            state.decode_error();
            assert!(!frames.give_up(&state));
        }
        state.good_frame();
        for _ in 0..MAX_ERRORS_IN_ROW - 1 {
            state.decode_error();
        }
        assert!(
            !frames.give_up(&state),
            "errors interrupted by a good frame"
        );
        state.decode_error();
        assert!(frames.give_up(&state));
        state.decode_error();
        assert!(!frames.give_up(&state), "given up once");
        let status = state.status();
        assert_eq!(
            (status.requested, status.in_use, status.fallbacks),
            (HwAccel::Vaapi, Backend::Software, 1)
        );
        assert_eq!(
            status.fallback.as_deref(),
            Some("vaapi: 10 decode errors in a row without a good frame")
        );
        assert!(
            state.given_up(),
            "the next session opens a software decoder"
        );
    }

    #[test]
    fn the_vaapi_choice_takes_the_hardware_format_else_the_first_software_one() {
        use ffi::AVPixelFormat::*;
        let pick = |list: &[ffi::AVPixelFormat]| {
            let mut list = list.to_vec();
            list.push(AV_PIX_FMT_NONE);
            // SAFETY: a list terminated by AV_PIX_FMT_NONE, as FFmpeg passes it.
            unsafe { pick_vaapi(ptr::null_mut(), list.as_ptr()) }
        };
        assert_eq!(
            pick(&[AV_PIX_FMT_VAAPI, AV_PIX_FMT_YUV420P]),
            AV_PIX_FMT_VAAPI
        );
        assert_eq!(
            pick(&[AV_PIX_FMT_YUV420P, AV_PIX_FMT_VAAPI]),
            AV_PIX_FMT_VAAPI
        );
        assert_eq!(
            pick(&[AV_PIX_FMT_VDPAU, AV_PIX_FMT_NV12, AV_PIX_FMT_YUV420P]),
            AV_PIX_FMT_NV12
        );
        assert_eq!(pick(&[AV_PIX_FMT_VDPAU]), AV_PIX_FMT_NONE);
    }
}
