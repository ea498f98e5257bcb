//! libclamav in-process: one compiled engine shared by every thread, scans from memory, and
//! reload by building a new engine beside the old one.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime};

use clamav_sys as sys;

use super::{AvEngine, Limits, Outcome, ScanOptions};

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// libclamav refused a signature folder or file.
    #[error("{path}: {message}")]
    Load {
        /// The folder or file.
        path: PathBuf,
        /// libclamav's message.
        message: String,
    },
    /// No signature was loaded from any folder.
    #[error("no signatures found in {0}")]
    NoSignatures(String),
    /// libclamav failed to initialize, to create or to compile the engine.
    #[error("libclamav: {0}")]
    Engine(String),
}

/// What the engine is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Signature folders (or files), loaded in order. Folders that do not exist are skipped, so
    /// `/var/lib/clamav` can be listed whether freshclam runs or not.
    pub signatures: Vec<PathBuf>,
    /// Also load [`super::BUILTIN_SIGNATURES`].
    pub builtin: bool,
    /// libclamav's cache of clean results by content hash (on in production: a campaign sends
    /// one attachment many times; off to measure scanning itself).
    pub cache: bool,
    /// Where libclamav unpacks archives and writes normalized layers (its default, the system
    /// temporary folder, when `None`). A memory file system (`/dev/shm`) spares every scan the
    /// disk file system's inode work, a third of the CPU time of small scans here.
    pub tmpdir: Option<PathBuf>,
    /// Scan limits.
    pub limits: Limits,
    /// What to look for.
    pub options: ScanOptions,
    /// How a reload trades memory for availability.
    pub reload: Reload,
}

/// How the engine is replaced when signatures change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reload {
    /// The new engine is built beside the running one, which serves scans until the swap:
    /// no scan ever waits, and memory holds two engines for the length of the build.
    Concurrent,
    /// The running engine is freed first (once its scans in flight have ended), then the new
    /// one is built; scans wait for it meanwhile. Memory holds one engine at most (clamd's
    /// `ConcurrentDatabaseReload no`). If the new signatures fail to load, scans report an
    /// error (the gateway defers mail) until a set that loads is in place.
    #[default]
    LowMemory,
}

fn strerror(e: sys::cl_error_t) -> String {
    // SAFETY: cl_strerror returns a static string for any code.
    unsafe { CStr::from_ptr(sys::cl_strerror(e)) }
        .to_string_lossy()
        .into_owned()
}

fn init() -> Result<(), LoadError> {
    static INIT: OnceLock<sys::cl_error_t> = OnceLock::new();
    // SAFETY: cl_init runs once, before any engine exists.
    let r = *INIT.get_or_init(|| unsafe { sys::cl_init(sys::CL_INIT_DEFAULT) });
    if r != sys::cl_error_t::CL_SUCCESS {
        return Err(LoadError::Engine(format!("cl_init: {}", strerror(r))));
    }
    Ok(())
}

/// libclamav's version string.
pub fn version() -> String {
    // SAFETY: cl_retver returns a static string.
    unsafe { CStr::from_ptr(sys::cl_retver()) }
        .to_string_lossy()
        .into_owned()
}

/// One compiled libclamav engine. Immutable once compiled; libclamav allows concurrent scans
/// on it from any number of threads.
pub struct Engine {
    ptr: *mut sys::cl_engine,
    signatures: u32,
    /// The scan options in libclamav's form, computed once.
    options: sys::cl_scan_options,
}

// SAFETY: a compiled cl_engine is read-only during scans and libclamav documents concurrent
// scanning with one engine as supported; it is freed once, in Drop.
unsafe impl Send for Engine {}
// SAFETY: as above.
unsafe impl Sync for Engine {}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: ptr came from cl_engine_new and is freed only here.
        unsafe {
            sys::cl_engine_free(self.ptr);
        }
    }
}

impl Engine {
    /// Loads every signature source and compiles the engine (seconds for the official
    /// databases: call it off any latency-sensitive thread).
    pub fn build(settings: &Settings) -> Result<Engine, LoadError> {
        init()?;
        // SAFETY: cl_init succeeded; a null return is handled.
        let ptr = unsafe { sys::cl_engine_new() };
        if ptr.is_null() {
            return Err(LoadError::Engine("cl_engine_new failed".into()));
        }
        let mut engine = Engine {
            ptr,
            signatures: 0,
            options: settings.options.to_clam(),
        };
        let l = &settings.limits;
        for (field, value) in [
            (sys::cl_engine_field::CL_ENGINE_MAX_FILESIZE, l.max_filesize),
            (sys::cl_engine_field::CL_ENGINE_MAX_SCANSIZE, l.max_scansize),
            (
                sys::cl_engine_field::CL_ENGINE_MAX_RECURSION,
                l.max_recursion,
            ),
            (sys::cl_engine_field::CL_ENGINE_MAX_FILES, l.max_files),
            (
                sys::cl_engine_field::CL_ENGINE_MAX_SCANTIME,
                l.max_scantime_ms,
            ),
        ] {
            // SAFETY: engine is valid and not compiled yet; the fields take numbers.
            let r = unsafe { sys::cl_engine_set_num(ptr, field, value as i64) };
            if r != sys::cl_error_t::CL_SUCCESS {
                return Err(LoadError::Engine(format!("limit: {}", strerror(r))));
            }
        }
        if let Some(dir) = &settings.tmpdir {
            std::fs::create_dir_all(dir).map_err(|e| LoadError::Load {
                path: dir.clone(),
                message: format!("temporary folder: {e}"),
            })?;
            let c =
                CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| LoadError::Load {
                    path: dir.clone(),
                    message: "path holds a NUL byte".into(),
                })?;
            // SAFETY: engine valid, not compiled yet; libclamav copies the string.
            let r = unsafe {
                sys::cl_engine_set_str(ptr, sys::cl_engine_field::CL_ENGINE_TMPDIR, c.as_ptr())
            };
            if r != sys::cl_error_t::CL_SUCCESS {
                return Err(LoadError::Engine(format!("tmpdir: {}", strerror(r))));
            }
        }
        if !settings.cache {
            // SAFETY: engine valid, not compiled yet.
            unsafe {
                sys::cl_engine_set_num(ptr, sys::cl_engine_field::CL_ENGINE_DISABLE_CACHE, 1)
            };
        }
        let mut dbopts = sys::CL_DB_STDOPT; // phishing signatures and URLs, bytecode
        if !settings.options.phishing {
            dbopts &= !(sys::CL_DB_PHISHING | sys::CL_DB_PHISHING_URLS);
        }
        // The built-in files go through a private folder: cl_load reads paths only.
        let builtin_dir = if settings.builtin {
            Some(BuiltinDir::write().map_err(|e| LoadError::Load {
                path: std::env::temp_dir(),
                message: format!("cannot write the built-in signatures: {e}"),
            })?)
        } else {
            None
        };
        let sources = settings
            .signatures
            .iter()
            .chain(builtin_dir.as_ref().map(|d| &d.0));
        for path in sources {
            if !holds_signatures(path) {
                continue;
            }
            let c =
                CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| LoadError::Load {
                    path: path.clone(),
                    message: "path holds a NUL byte".into(),
                })?;
            let mut signo: u32 = 0;
            // SAFETY: engine valid; c is a NUL-terminated path; signo is written by cl_load.
            let r = unsafe { sys::cl_load(c.as_ptr(), ptr, &mut signo, dbopts) };
            if r != sys::cl_error_t::CL_SUCCESS {
                return Err(LoadError::Load {
                    path: path.clone(),
                    message: strerror(r),
                });
            }
            engine.signatures += signo;
        }
        drop(builtin_dir);
        if engine.signatures == 0 {
            let mut tried: Vec<String> = settings
                .signatures
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            if settings.builtin {
                tried.push("the built-in signatures".into());
            }
            return Err(LoadError::NoSignatures(tried.join(", ")));
        }
        // SAFETY: engine valid; the callback matches clcb_virus_found and reads its context as
        // the `Found` that `scan` passes.
        unsafe { sys::cl_engine_set_clcb_virus_found(ptr, Some(on_virus_found)) };
        // SAFETY: engine valid, loaded, compiled once.
        let r = unsafe { sys::cl_engine_compile(ptr) };
        if r != sys::cl_error_t::CL_SUCCESS {
            return Err(LoadError::Engine(format!("compile: {}", strerror(r))));
        }
        Ok(engine)
    }

    /// How many signatures were loaded.
    pub fn signatures(&self) -> u32 {
        self.signatures
    }

    /// Scans bytes in memory (through a libclamav fmap; no copy, no temporary file for the
    /// input itself). `name` is a hint for logs only.
    pub fn scan(&self, data: &[u8], name: Option<&str>) -> Outcome {
        let mut opts = self.options;
        let cname = name.and_then(|n| CString::new(n).ok());
        let mut virname: *const std::os::raw::c_char = std::ptr::null();
        let mut found = Found(None);
        let mut scanned: std::os::raw::c_ulong = 0;
        // An empty input still gets a valid one-byte-free map: libclamav refuses len 0.
        if data.is_empty() {
            return Outcome::Clean;
        }
        // SAFETY: data outlives the map, which is closed before returning; the engine is
        // compiled and shared read-only; virname points into the engine's signature table and
        // is copied before the engine can go away (we hold &self).
        unsafe {
            let map = sys::cl_fmap_open_memory(data.as_ptr().cast(), data.len());
            if map.is_null() {
                return Outcome::Error("cl_fmap_open_memory failed".into());
            }
            let r = sys::cl_scanmap_callback(
                map,
                cname.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                &mut virname,
                &mut scanned,
                self.ptr,
                &mut opts,
                (&mut found as *mut Found).cast(),
            );
            sys::cl_fmap_close(map);
            match r {
                sys::cl_error_t::CL_CLEAN => Outcome::Clean,
                sys::cl_error_t::CL_VIRUS => {
                    // Heuristic alerts (limits among them) come through the callback only.
                    let name = if !virname.is_null() {
                        CStr::from_ptr(virname).to_string_lossy().into_owned()
                    } else {
                        found.0.unwrap_or_else(|| "Unknown".to_owned())
                    };
                    Outcome::found(name)
                }
                e => Outcome::Error(strerror(e)),
            }
        }
    }
}

/// The file name extensions libclamav loads signatures from.
const DB_EXTENSIONS: &[&str] = &[
    "cvd", "cld", "cud", "hdb", "hsb", "hdu", "hsu", "mdb", "msb", "mdu", "msu", "ndb", "ndu",
    "ldb", "ldu", "idb", "cdb", "crb", "cat", "cbc", "fp", "sfp", "ign", "ign2", "pdb", "gdb",
    "wdb", "ftm", "yar", "yara", "imp", "pwdb", "info",
];

/// Whether a source is a signature file, or a folder with at least one (an empty
/// `/var/lib/clamav`, or one holding only freshclam's state file, is skipped, not an error).
fn holds_signatures(path: &Path) -> bool {
    let is_db = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| DB_EXTENSIONS.contains(&e))
    };
    if path.is_dir() {
        std::fs::read_dir(path).is_ok_and(|rd| rd.flatten().any(|e| is_db(&e.path())))
    } else {
        path.is_file()
    }
}

/// A temporary folder holding the built-in signature files, removed when dropped.
struct BuiltinDir(PathBuf);

impl BuiltinDir {
    fn write() -> std::io::Result<BuiltinDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mxgate-signatures-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let d = BuiltinDir(dir);
        for (name, text) in super::BUILTIN_SIGNATURES {
            std::fs::write(d.0.join(name), text)?;
        }
        Ok(d)
    }
}

impl Drop for BuiltinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first name libclamav reported during one scan.
struct Found(Option<String>);

unsafe extern "C" fn on_virus_found(
    _fd: std::os::raw::c_int,
    virname: *const std::os::raw::c_char,
    context: *mut std::os::raw::c_void,
) {
    if context.is_null() || virname.is_null() {
        return;
    }
    // SAFETY: context is the `Found` that `Engine::scan` passed for this scan, alive for its
    // duration and touched by no one else meanwhile; virname is a NUL-terminated string.
    unsafe {
        let found = &mut *(context as *mut Found);
        if found.0.is_none() {
            found.0 = Some(CStr::from_ptr(virname).to_string_lossy().into_owned());
        }
    }
}

/// A libclamav engine that can be replaced while in use: scans take the current engine (an
/// `Arc`), a reload builds the next one on the calling thread and swaps it in; the old engine
/// is freed when its last scan ends.
pub struct ClamAv {
    settings: Settings,
    /// The engine; `None` only after a failed low-memory reload.
    current: RwLock<Option<Arc<Engine>>>,
    /// What the signature sources looked like when the current engine was built.
    seen: Mutex<Vec<(PathBuf, u64, SystemTime)>>,
}

impl ClamAv {
    /// Builds the first engine.
    pub fn new(settings: Settings) -> Result<ClamAv, LoadError> {
        let seen = fingerprint(&settings.signatures);
        let engine = Engine::build(&settings)?;
        Ok(ClamAv {
            settings,
            current: RwLock::new(Some(Arc::new(engine))),
            seen: Mutex::new(seen),
        })
    }

    /// The engine scans use now (waiting while a low-memory reload builds the next one);
    /// `None` when a low-memory reload failed.
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Signatures in the engine scans use now.
    pub fn signatures(&self) -> u32 {
        self.engine().map_or(0, |e| e.signatures())
    }

    /// Rebuilds the engine when a signature file was added, removed or changed since the last
    /// build (or when no engine is in place). Returns whether it swapped. On a load error the
    /// current engine stays (concurrent reload) or none is left (low-memory reload).
    pub fn reload_if_changed(&self) -> Result<bool, LoadError> {
        let now = fingerprint(&self.settings.signatures);
        // A failed low-memory reload leaves no engine: the sources are then tried again even if
        // they went back to what they were.
        let has_engine = self.engine().is_some();
        {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now && has_engine {
                return Ok(false);
            }
        }
        match self.settings.reload {
            Reload::Concurrent => {
                let next = Arc::new(Engine::build(&self.settings)?);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(next);
            }
            Reload::LowMemory => {
                // New scans wait on this lock from here until the new engine is in.
                let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
                if let Some(old) = slot.take() {
                    // Scans that took the engine before the lock finish on it; then it goes.
                    while Arc::strong_count(&old) > 1 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    drop(old);
                }
                *slot = Some(Arc::new(Engine::build(&self.settings)?));
            }
        }
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(true)
    }

    /// Checks the signature sources every `every` on a background thread and reloads when they
    /// changed, as long as this `ClamAv` lives. `report` hears of each reload: the new
    /// signature count, or why the current engine stays.
    pub fn watch(
        self: &Arc<Self>,
        every: Duration,
        report: impl Fn(Result<u32, LoadError>) + Send + 'static,
    ) -> std::io::Result<()> {
        let weak: Weak<ClamAv> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("mxgate-av-reload".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(av) = weak.upgrade() else { return };
                match av.reload_if_changed() {
                    Ok(true) => report(Ok(av.signatures())),
                    Ok(false) => {}
                    Err(e) => report(Err(e)),
                }
            })?;
        Ok(())
    }
}

impl AvEngine for ClamAv {
    fn name(&self) -> &str {
        "clamav"
    }

    fn scan(&self, data: &[u8], name: Option<&str>) -> Outcome {
        match self.engine() {
            Some(e) => e.scan(data, name),
            None => Outcome::Error("no engine: the last signature reload failed".into()),
        }
    }
}

/// Every file under the signature sources with its size and modification time, sorted.
fn fingerprint(sources: &[PathBuf]) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    for s in sources {
        collect(s, &mut out);
    }
    out.sort();
    out
}

fn collect(path: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(md) = std::fs::metadata(path) else {
        return;
    };
    if md.is_dir() {
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() {
                    collect(&p, out);
                }
            }
        }
    } else {
        out.push((
            path.to_path_buf(),
            md.len(),
            md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        ));
    }
}
