//! A folder of images per identity: `root/<identity>/<image>.{jpg,jpeg,png}`.
//!
//! - Identities are the sub-folders of `root` (symbolic links followed), sorted by name (byte order); the
//!   `k`-th gets label `k`. Files directly in `root` are ignored.
//! - Images are the files directly inside an identity folder whose extension is `jpg`, `jpeg` or `png` (any
//!   case), sorted by name; other files and nested folders are ignored. Samples are numbered identity by
//!   identity, images in that order.
//! - Names starting with `.` (hidden files, `.DS_Store`, editor droppings) are ignored everywhere.
//! - Errors at [`ImageFolder::open`]: `root` unreadable or with no identity folder, an identity folder with no
//!   image (it would be a class without samples: almost always a mistake in the data).
//! - Every image must be exactly the training size: a different size is an error naming the file when the
//!   image is loaded. Nothing is resized, since resizing aligned faces silently changes what the network sees;
//!   prepare the images at the training size (insightface's sets are aligned 112x112 crops).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use elasticface_core::nn::ImageShape;

use super::decode::decode_rgb;
use super::{Dataset, Sample};

/// Extensions of the files taken as images (compared without regard to case).
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Whether `name` ends in one of [`IMAGE_EXTENSIONS`].
fn is_image_name(name: &std::ffi::OsStr) -> bool {
    let ext = Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or("");
    IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(ext))
}

/// An image-folder training set (see the [module documentation](self)).
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    shape: ImageShape,
    /// Identity folder names, sorted; index = label.
    classes: Vec<OsString>,
    /// Every image: its label and its file name inside the label's folder.
    images: Vec<(u32, OsString)>,
}

impl ImageFolder {
    /// Lists `root`'s identities and images; images must be of `shape`.
    pub fn open(root: &Path, shape: ImageShape) -> Result<Self> {
        shape.validate().map_err(|e| anyhow::anyhow!("image shape {}x{}: {e}", shape.h, shape.w))?;
        let mut classes: Vec<OsString> =
            visible_entries(root)?.into_iter().filter(|e| e.is_dir).map(|e| e.name).collect();
        classes.sort();
        if classes.is_empty() {
            bail!("image folder {} has no identity sub-folder (expected root/<identity>/<image>.jpg)", root.display());
        }
        ensure!(u32::try_from(classes.len()).is_ok(), "{}: too many identities", root.display());
        let mut images = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut files: Vec<OsString> = visible_entries(&dir)?
                .into_iter()
                .filter(|e| e.is_file && is_image_name(&e.name))
                .map(|e| e.name)
                .collect();
            if files.is_empty() {
                // E.g. the folder `elasticface synth` writes, given instead of its `train` sub-folder.
                let recordio = dir.join("train.rec").is_file();
                let dir = dir.display();
                let hint = match recordio {
                    true => format!(": it holds a RecordIO dataset (train.rec); to train on it, pass {dir} itself"),
                    false => String::new(),
                };
                bail!("identity folder {dir} has no .jpg, .jpeg or .png image{hint}");
            }
            files.sort();
            images.extend(files.into_iter().map(|f| (label as u32, f)));
        }
        Ok(Self { root: root.to_owned(), shape, classes, images })
    }

    /// The identity folder names, in label order.
    pub fn class_names(&self) -> impl Iterator<Item = &std::ffi::OsStr> {
        self.classes.iter().map(OsString::as_os_str)
    }

    /// The file of sample `index` (`None` past the end).
    pub fn path(&self, index: usize) -> Option<PathBuf> {
        let (label, name) = self.images.get(index)?;
        Some(self.root.join(&self.classes[*label as usize]).join(name))
    }

    /// The label of sample `index` (`None` past the end).
    pub fn label(&self, index: usize) -> Option<u32> {
        self.images.get(index).map(|&(label, _)| label)
    }
}

/// An entry of a listed directory: its name and what it is (symbolic links followed).
struct Entry {
    name: OsString,
    is_dir: bool,
    is_file: bool,
}

/// The entries of `dir` whose names do not start with `.`. File types come from the directory listing itself
/// where the platform provides them (one `stat` per symbolic link only), which matters for folders of millions
/// of images.
fn visible_entries(dir: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let mut kind = entry.file_type().with_context(|| format!("cannot stat {}", entry.path().display()))?;
        if kind.is_symlink() {
            kind = fs::metadata(entry.path())
                .with_context(|| format!("cannot follow the link {}", entry.path().display()))?
                .file_type();
        }
        entries.push(Entry { name, is_dir: kind.is_dir(), is_file: kind.is_file() });
    }
    Ok(entries)
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn image_shape(&self) -> ImageShape {
        self.shape
    }

    fn load(&self, index: usize) -> Result<Sample> {
        let Some(path) = self.path(index) else {
            bail!("sample {index} is past the {} images of {}", self.images.len(), self.root.display());
        };
        let bytes = fs::read(&path).with_context(|| format!("cannot read image {}", path.display()))?;
        let rgb = decode_rgb(&bytes, self.shape).with_context(|| format!("image {}", path.display()))?;
        Ok(Sample { rgb, label: self.images[index].0 })
    }

    fn describe(&self, index: usize) -> String {
        match self.path(index) {
            Some(path) => format!("image {}", path.display()),
            None => format!("sample {index} (past the end) of {}", self.root.display()),
        }
    }
}
