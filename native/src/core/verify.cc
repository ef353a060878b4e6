#include "core/verify.h"

#include <algorithm>
#include <cctype>
#include <exception>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <sstream>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/stat.h>
#include <unistd.h>
#define BLIPDIFF_HAVE_STAT 1
#endif

#include "core/errors.h"
#include "core/sha256.h"

namespace blipdiff {

namespace {

namespace fs = std::filesystem;

// What identifies one version of a file on disk.
struct FileStamp {
  unsigned long long size = 0, mtime_s = 0, mtime_ns = 0, dev = 0, ino = 0;
  bool operator==(const FileStamp&) const = default;
};

struct Record {
  std::string sha256;
  FileStamp stamp;
};

std::optional<FileStamp> stamp_of(const std::string& path) {
#ifdef BLIPDIFF_HAVE_STAT
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
#if defined(__APPLE__)
  const auto& mtime = st.st_mtimespec;
#else
  const auto& mtime = st.st_mtim;
#endif
  return FileStamp{static_cast<unsigned long long>(st.st_size), static_cast<unsigned long long>(mtime.tv_sec),
                   static_cast<unsigned long long>(mtime.tv_nsec), static_cast<unsigned long long>(st.st_dev),
                   static_cast<unsigned long long>(st.st_ino)};
#else
  (void)path;
  return std::nullopt;
#endif
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Record file format: a header line, then "<sha256> <size> <mtime_s> <mtime_ns> <dev> <ino> <file name>".
constexpr const char* kHeader = "blipdiff-verified 1";

std::map<std::string, Record> read_records(const fs::path& dir) {
  std::map<std::string, Record> records;
  std::ifstream in(dir / kVerifiedRecord);
  std::string line;
  if (!in || !std::getline(in, line) || line != kHeader) return records;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    Record r;
    std::string name;
    if (fields >> r.sha256 >> r.stamp.size >> r.stamp.mtime_s >> r.stamp.mtime_ns >> r.stamp.dev >> r.stamp.ino &&
        std::getline(fields >> std::ws, name) && !name.empty()) {
      records[name] = r;
    }
  }
  return records;
}

void write_records(const fs::path& dir, const std::map<std::string, Record>& records) {
  std::error_code ec;
#ifdef BLIPDIFF_HAVE_STAT
  const fs::path tmp = dir / (std::string(kVerifiedRecord) + ".tmp-" + std::to_string(::getpid()));
#else
  const fs::path tmp = dir / (std::string(kVerifiedRecord) + ".tmp");
#endif
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return;  // read-only folder: no record, every load hashes
    out << kHeader << '\n';
    for (const auto& [name, r] : records) {
      const FileStamp& s = r.stamp;
      out << r.sha256 << ' ' << s.size << ' ' << s.mtime_s << ' ' << s.mtime_ns << ' ' << s.dev << ' ' << s.ino << ' '
          << name << '\n';
    }
    if (!out) {
      out.close();
      fs::remove(tmp, ec);
      return;
    }
  }
  fs::rename(tmp, dir / kVerifiedRecord, ec);
  if (ec) fs::remove(tmp, ec);
}

}  // namespace

std::vector<NamedFile> module_files(const std::string& name, const ModuleFile& file) {
  std::vector<NamedFile> out = {{name + " module", file.path, file.sha256}};
  if (!file.weights.empty()) out.push_back({name + " weights file", file.weights, file.weights_sha256});
  return out;
}

void verify_files(const std::vector<NamedFile>& files, const std::atomic<bool>* cancel) {
  struct Job {
    const NamedFile* file;
    std::string expected;
    std::optional<FileStamp> stamp;
    std::future<std::string> hash;
  };
  std::map<fs::path, std::map<std::string, Record>> records;  // per folder
  std::vector<Job> jobs;
  for (const NamedFile& f : files) {
    if (f.sha256.empty() || !fs::exists(f.path)) continue;
    Job job{&f, lower(f.sha256), stamp_of(f.path), {}};
    const fs::path path(f.path);
    const fs::path dir = path.parent_path();
    if (!records.count(dir)) records[dir] = read_records(dir);
    const auto& known = records[dir];
    const auto it = known.find(path.filename().string());
    if (job.stamp && it != known.end() && it->second.sha256 == job.expected && it->second.stamp == *job.stamp) continue;
    jobs.push_back(std::move(job));
  }
  if (jobs.empty()) return;
  // One thread per file: hashing is CPU-bound per file and the files are few.
  for (Job& job : jobs) {
    const std::string path = job.file->path;
    job.hash = std::async(std::launch::async, [path, cancel] { return sha256_file(path, cancel); });
  }
  std::exception_ptr first_error;
  std::map<fs::path, bool> changed;
  for (Job& job : jobs) {
    std::string actual;
    try {
      actual = job.hash.get();
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
      continue;
    }
    const fs::path path(job.file->path);
    auto& known = records[path.parent_path()];
    if (actual != job.expected) {
      known.erase(path.filename().string());
      changed[path.parent_path()] = true;
      if (!first_error) {
        first_error = std::make_exception_ptr(
            Error(codes::kChecksum, "checksum mismatch for the " + job.file->what + " " + job.file->path +
                                        " (expected sha256 " + job.expected + ", found " + actual +
                                        "): the file is damaged or was changed; re-export the model with "
                                        "`blipdiff convert`"));
      }
      continue;
    }
    // Stamp taken before hashing: a file rewritten while it was hashed does not get a record.
    if (job.stamp && stamp_of(job.file->path) == job.stamp) {
      known[path.filename().string()] = Record{actual, *job.stamp};
      changed[path.parent_path()] = true;
    }
  }
  for (const auto& [dir, did_change] : changed) {
    if (did_change) write_records(dir, records[dir]);
  }
  if (cancel && cancel->load()) throw AbortError();  // an abort wins over a mismatch found meanwhile
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace blipdiff
