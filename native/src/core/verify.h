// Verifying the module files against the manifest's sha256 before they are loaded.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "core/params.h"

namespace blipdiff {

struct NamedFile {
  std::string what;    // "unet module", "unet weights file", ... (for messages)
  std::string path;
  std::string sha256;  // lowercase hex; empty skips this file
};

// The files of module `name` to verify: its archive and, for format 2, its weights file.
std::vector<NamedFile> module_files(const std::string& name, const ModuleFile& file);

// Checks every file that has an expected sha256; missing files are left to the loader's message.
// Files are hashed in parallel. Hashing a full-size model takes seconds to half a minute, so a
// successful check is remembered in `.blipdiff-verified` beside the files, keyed by size,
// modification time (ns), device and inode: a file that still matches its record is not hashed again,
// and any change to it (a rewrite, a copy, a truncation) makes it hashed anew. The record is an
// optimisation only: it is ignored when unreadable and not written when the folder is read-only.
// Throws Error(codes::kChecksum) naming the first file whose hash differs, and AbortError when `cancel` is
// set while hashing (every hashing thread stops at its next 1 MiB chunk; no record is written for a file
// that was not hashed to the end).
void verify_files(const std::vector<NamedFile>& files, const std::atomic<bool>* cancel = nullptr);

// The name of the record file written beside the modules.
inline constexpr const char* kVerifiedRecord = ".blipdiff-verified";

}  // namespace blipdiff
