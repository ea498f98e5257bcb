//! One Tesseract engine, driven through its C API.
//!
//! The `tesseract` crate's `recognize` passes no progress monitor, and a monitor is the only way
//! to give Tesseract a deadline; so the engine is driven through `tesseract-sys`, the bindings
//! that crate is built on, with the same calls it makes plus the monitor.

use std::ffi::{CStr, CString};

use crate::prepare::Prepared;
use tesseract_sys as sys;

/// Why Tesseract could not start or read an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TessError {
    /// The language data could not be loaded.
    #[error("tesseract: cannot load language {0:?} (is tesseract-ocr-{0} installed?)")]
    Init(String),
    /// Recognition failed or ran past its deadline.
    #[error("tesseract: recognition failed or timed out")]
    Recognize,
}

/// A Tesseract instance. Not shareable between threads: each worker owns one.
pub struct Tesseract {
    api: *mut sys::TessBaseAPI,
}

// SAFETY: the instance is used by one thread at a time (it is not Sync); moving it to the worker
// that owns it is fine.
unsafe impl Send for Tesseract {}

impl Drop for Tesseract {
    fn drop(&mut self) {
        // SAFETY: api came from TessBaseAPICreate and is deleted once.
        unsafe {
            sys::TessBaseAPIEnd(self.api);
            sys::TessBaseAPIDelete(self.api);
        }
    }
}

impl Tesseract {
    /// Loads `lang` (`eng`) from the default tessdata folder, or `datapath`.
    pub fn new(datapath: Option<&str>, lang: &str) -> Result<Tesseract, TessError> {
        // Leptonica reports oddities of images it handles for Tesseract on stderr ("invalid
        // box"); they are not errors of ours, and a gateway's log is no place for them.
        static QUIET: std::sync::Once = std::sync::Once::new();
        // SAFETY: sets a process-wide severity level; no pointers involved.
        QUIET.call_once(|| unsafe {
            leptonica_sys::setMsgSeverity(6); // L_SEVERITY_NONE
        });
        let err = || TessError::Init(lang.to_owned());
        let c_lang = CString::new(lang).map_err(|_| err())?;
        let c_path = datapath.map(CString::new).transpose().map_err(|_| err())?;
        // SAFETY: create never fails for lack of arguments; init reads two C strings.
        unsafe {
            let api = sys::TessBaseAPICreate();
            if api.is_null() {
                return Err(err());
            }
            let t = Tesseract { api };
            let rc = sys::TessBaseAPIInit3(
                api,
                c_path.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                c_lang.as_ptr(),
            );
            if rc != 0 {
                return Err(err());
            }
            // As the tesseract command does by default: automatic page segmentation.
            sys::TessBaseAPISetPageSegMode(api, sys::TessPageSegMode_PSM_AUTO);
            // No "Estimating resolution" chatter on stderr for every image.
            let name = CString::new("debug_file").expect("no NUL");
            let value = CString::new("/dev/null").expect("no NUL");
            sys::TessBaseAPISetVariable(api, name.as_ptr(), value.as_ptr());
            Ok(t)
        }
    }

    /// Reads the text of an image, giving up after `deadline_ms` milliseconds.
    pub fn read(&mut self, img: &Prepared, deadline_ms: u32) -> Result<String, TessError> {
        let (w, h) = img.dimensions();
        let (pixels, bpp) = img.raw();
        // SAFETY: the image buffer outlives the recognition (cleared before returning); the
        // monitor is created and deleted here; the returned text is copied and freed.
        unsafe {
            sys::TessBaseAPISetImage(
                self.api,
                pixels.as_ptr(),
                w as i32,
                h as i32,
                bpp as i32,
                (w * bpp) as i32,
            );
            let monitor = sys::TessMonitorCreate();
            sys::TessMonitorSetDeadlineMSecs(monitor, deadline_ms.min(i32::MAX as u32) as i32);
            let rc = sys::TessBaseAPIRecognize(self.api, monitor);
            sys::TessMonitorDelete(monitor);
            if rc != 0 {
                sys::TessBaseAPIClear(self.api);
                return Err(TessError::Recognize);
            }
            let p = sys::TessBaseAPIGetUTF8Text(self.api);
            let text = if p.is_null() {
                String::new()
            } else {
                let s = CStr::from_ptr(p).to_string_lossy().into_owned();
                sys::TessDeleteText(p);
                s
            };
            sys::TessBaseAPIClear(self.api);
            Ok(text)
        }
    }
}
