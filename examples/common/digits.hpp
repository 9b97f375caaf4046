#pragma once
/// @file digits.hpp
/// The UCI optical digits data set (8×8 images, 1797 samples, 10 classes; attribution in
/// examples/data/README.md) for the examples: loading from the gzipped CSV, a stratified seeded
/// train/test split and symmetric label noise on the training labels.
///
///     auto all  = examples::load_digits(path);                 // x: 64 × 1797 in [0, 1]
///     auto sp   = examples::stratified_split(all, 0.3, seed);  // 70 % train / 30 % test per class
///     examples::add_symmetric_label_noise(sp.train.y, 0.3, 10, seed);

#include <zlib.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "rng.hpp"

namespace examples {

/// Samples as columns: `x` is features × n, `y[j]` is the label of column j.
struct dataset {
  Eigen::MatrixXf x;
  std::vector<int> y;

  std::size_t size() const { return y.size(); }
  Eigen::Index features() const { return x.rows(); }

  /// The samples at `idx`, in that order.
  template <class Indices>
  dataset subset(const Indices& idx) const {
    return gather(x, y, idx);
  }

  /// The columns `idx` of x with their labels, in that order (ESAM's selected samples).
  template <class Indices>
  static dataset gather(const Eigen::MatrixXf& x, const std::vector<int>& y, const Indices& idx) {
    dataset d;
    d.x.resize(x.rows(), static_cast<Eigen::Index>(idx.size()));
    d.y.resize(idx.size());
    for (std::size_t j = 0; j < idx.size(); ++j) {
      d.x.col(static_cast<Eigen::Index>(j)) = x.col(static_cast<Eigen::Index>(idx[j]));
      d.y[j] = y[idx[j]];
    }
    return d;
  }
};

inline constexpr int digits_classes = 10;
inline constexpr int digits_pixels = 64;

/// Reads the digits CSV (gzip or plain text: zlib reads both): 65 integers per line, 64 pixels in
/// 0..16 then the label. Pixels are scaled to [0, 1]. Throws std::runtime_error naming the file
/// and line on anything unexpected.
inline dataset load_digits(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("load_digits: cannot open " + path);
  std::vector<std::array<int, digits_pixels + 1>> rows;
  std::string line;
  char buf[4096];
  bool ok = true;
  std::string error;
  while (ok && gzgets(f, buf, sizeof buf)) {
    line = buf;
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (line.empty()) continue;
    std::array<int, digits_pixels + 1> r{};
    std::size_t pos = 0;
    for (int k = 0; k <= digits_pixels && ok; ++k) {
      std::size_t used = 0;
      try {
        r[k] = std::stoi(line.substr(pos), &used);
      } catch (const std::exception&) {
        used = 0;
      }
      const bool last = k == digits_pixels;
      const std::size_t end = pos + used;
      const bool bad_sep = used == 0 || (last ? end != line.size() : (end >= line.size() || line[end] != ','));
      const bool bad_value = last ? (r[k] < 0 || r[k] >= digits_classes) : (r[k] < 0 || r[k] > 16);
      if (bad_sep || bad_value) {
        ok = false;
        error = "line " + std::to_string(rows.size() + 1) + ", field " + std::to_string(k + 1);
      }
      pos = end + 1;
    }
    if (ok) rows.push_back(r);
  }
  int errnum = Z_OK;
  const char* zmsg = gzerror(f, &errnum);
  const std::string zerr = errnum != Z_OK && errnum != Z_STREAM_END ? std::string(zmsg) : std::string();
  gzclose(f);
  if (!ok) throw std::runtime_error("load_digits: " + path + ": malformed " + error);
  if (!zerr.empty()) throw std::runtime_error("load_digits: " + path + ": " + zerr);
  if (rows.empty()) throw std::runtime_error("load_digits: " + path + ": no samples");

  dataset d;
  d.x.resize(digits_pixels, static_cast<Eigen::Index>(rows.size()));
  d.y.resize(rows.size());
  for (std::size_t j = 0; j < rows.size(); ++j) {
    for (int k = 0; k < digits_pixels; ++k) d.x(k, static_cast<Eigen::Index>(j)) = static_cast<float>(rows[j][k]) / 16.0f;
    d.y[j] = rows[j][digits_pixels];
  }
  return d;
}

struct train_test {
  dataset train, test;
};

/// Splits each class separately: round(test_fraction · n_c) of its samples, chosen at random,
/// go to the test set, so both sides keep the class proportions. Both sides are shuffled.
inline train_test stratified_split(const dataset& d, double test_fraction, std::uint64_t seed, int classes = digits_classes) {
  if (!(test_fraction > 0 && test_fraction < 1)) throw std::invalid_argument("stratified_split: test_fraction must be in (0, 1)");
  rng r = rng::stream(seed, 1);
  std::vector<std::vector<std::size_t>> by_class(static_cast<std::size_t>(classes));
  for (std::size_t j = 0; j < d.size(); ++j) by_class.at(static_cast<std::size_t>(d.y[j])).push_back(j);
  std::vector<std::size_t> tr, te;
  for (auto& c : by_class) {
    r.shuffle(c);
    const auto n_test = static_cast<std::size_t>(std::lround(test_fraction * static_cast<double>(c.size())));
    te.insert(te.end(), c.begin(), c.begin() + static_cast<std::ptrdiff_t>(n_test));
    tr.insert(tr.end(), c.begin() + static_cast<std::ptrdiff_t>(n_test), c.end());
  }
  r.shuffle(tr);
  r.shuffle(te);
  return {d.subset(tr), d.subset(te)};
}

/// Symmetric label noise: exactly round(p · n) labels, chosen uniformly without replacement, are
/// each replaced by a class drawn uniformly among the OTHER classes (so every chosen label is
/// wrong afterwards). Returns how many labels were changed.
inline std::size_t add_symmetric_label_noise(std::vector<int>& y, double p, int classes, std::uint64_t seed) {
  if (!(p >= 0 && p <= 1)) throw std::invalid_argument("add_symmetric_label_noise: p must be in [0, 1]");
  if (classes < 2) throw std::invalid_argument("add_symmetric_label_noise: needs at least 2 classes");
  rng r = rng::stream(seed, 2);
  std::vector<std::size_t> idx(y.size());
  for (std::size_t j = 0; j < idx.size(); ++j) idx[j] = j;
  r.shuffle(idx);
  const auto n = static_cast<std::size_t>(std::lround(p * static_cast<double>(y.size())));
  for (std::size_t j = 0; j < n; ++j) {
    int& label = y[idx[j]];
    const int other = static_cast<int>(r.below(static_cast<std::uint64_t>(classes - 1)));
    label = other < label ? other : other + 1;  // skip the true class
  }
  return n;
}

}  // namespace examples
