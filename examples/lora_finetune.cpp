// LoRA fine-tuning on real data (the UCI handwritten digits, examples/data/digits.csv.gz):
// pretrain a small MLP on half of the images, freeze it, then train ONLY rank-r LoRA adapters on a
// shifted task (the other half, images translated by one pixel right and down, 20 % of the
// training labels replaced by a random other class), with AdamW, SAM over AdamW, BAR over AdamW
// and Flat-LoRA over AdamW (or the same four over SGD with --base sgd). Reports test accuracy on
// the clean-labelled shifted test images, wall time per epoch and the final balancedness
// |B| = ½|‖A‖² − ‖B‖²| of the adapters.
//
//   build:  cmake --build build --target example_lora_finetune
//   run:    ./build/examples/example_lora_finetune [--rank 4] [--epochs 40] [--seeds 1,2,3,4,5]
//           [--rho 0.05] [--flat-rho 0.05] [--lr 1e-2] [--base adamw|sgd] [--noise 0.2] [--data examples/data/digits.csv.gz]
//           (--base sgd: SGD with momentum 0.9 instead of AdamW; pass a larger --lr, e.g. 0.1)
//
// The adapters are registered with param_set::add_lora_pair, which is all BAR needs to find them,
// each with its frozen base weight (flatmin::lora_base), which Flat-LoRA perturbs. The weights
// and adapters are row-major, as the shapes given to add_lora_pair say.
#include <flatmin/flatmin.hpp>

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/digits.hpp"

#ifndef FLATMIN_DIGITS_CSV
#define FLATMIN_DIGITS_CSV "examples/data/digits.csv.gz"
#endif

namespace {

using mat = Eigen::MatrixXf;
using rmat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;  // W, A, B
using vec = Eigen::VectorXf;

struct dataset {
  mat X;  // 64 × n, pixels / 16
  std::vector<int> y;
};

// The shared loader (examples/common/digits.hpp), columns as samples, pixels in [0, 1].
dataset load_digits(const std::string& path) {
  const examples::dataset d = examples::load_digits(path);
  return {d.x, d.y};
}

dataset subset(const dataset& d, const std::vector<int>& idx) {
  dataset s;
  s.X.resize(64, static_cast<Eigen::Index>(idx.size()));
  for (std::size_t j = 0; j < idx.size(); ++j) {
    s.X.col(static_cast<Eigen::Index>(j)) = d.X.col(idx[j]);
    s.y.push_back(d.y[idx[j]]);
  }
  return s;
}

// The distribution shift: every 8 × 8 image moved one pixel right and one down (zero fill).
void translate(dataset& d) {
  for (Eigen::Index j = 0; j < d.X.cols(); ++j) {
    vec out = vec::Zero(64);
    for (int r = 0; r < 7; ++r)
      for (int c = 0; c < 7; ++c) out((r + 1) * 8 + c + 1) = d.X(r * 8 + c, j);
    d.X.col(j) = out;
  }
}

constexpr int In = 64, Hid = 64, Out = 10;

// Softmax cross-entropy (mean) and its cotangent.
double cross_entropy(const mat& logits, const std::vector<int>& y, const std::vector<int>& idx, mat& cot) {
  const int n = static_cast<int>(idx.size());
  cot.resize(Out, n);
  double loss = 0;
  for (int j = 0; j < n; ++j) {
    const float mx = logits.col(j).maxCoeff();
    const vec e = (logits.col(j).array() - mx).exp();
    const float z = e.sum();
    loss += std::log(z) - (logits(y[idx[j]], j) - mx);
    cot.col(j) = e / (z * float(n));
    cot(y[idx[j]], j) -= 1.0f / float(n);
  }
  return loss / n;
}

/// The frozen MLP (64 → 64 tanh → 10) with LoRA adapters W + B·A on both layers.
struct mlp {
  rmat W1, W2;
  vec b1, b2;
  rmat A1, B1, A2, B2;      // adapters: A (r × in), B (out × r); B = 0 at the start
  rmat gA1, gB1, gA2, gB2;  // their gradients
  rmat gW1, gW2;            // used in pretraining only
  vec gb1, gb2;

  mat forward(const mat& X, mat& h) const {
    h = (((W1 + B1 * A1) * X).colwise() + b1).array().tanh().matrix();
    return ((W2 + B2 * A2) * h).colwise() + b2;
  }
  double accuracy(const dataset& d) const {
    mat h;
    const mat logits = forward(d.X, h);
    int ok = 0;
    for (Eigen::Index j = 0; j < logits.cols(); ++j) {
      Eigen::Index k;
      logits.col(j).maxCoeff(&k);
      ok += (k == d.y[j]);
    }
    return double(ok) / double(logits.cols());
  }
  // Loss and gradients on the columns `idx` of d; full gradients of W when `pretrain`.
  double loss_grad(const dataset& d, const std::vector<int>& idx, bool pretrain) {
    mat X(In, static_cast<Eigen::Index>(idx.size()));
    for (std::size_t j = 0; j < idx.size(); ++j) X.col(static_cast<Eigen::Index>(j)) = d.X.col(idx[j]);
    mat h, cot;
    const double loss = cross_entropy(forward(X, h), d.y, idx, cot);
    const mat gW2full = cot * h.transpose();
    const mat dz = (((W2 + B2 * A2).transpose() * cot).array() * (1.0f - h.array().square())).matrix();
    const mat gW1full = dz * X.transpose();
    if (pretrain) {
      gW1 = gW1full;
      gW2 = gW2full;
      gb1 = dz.rowwise().sum();
      gb2 = cot.rowwise().sum();
    } else {  // ∂/∂B = G Aᵀ, ∂/∂A = Bᵀ G for W + B·A
      gB1 = gW1full * A1.transpose();
      gA1 = B1.transpose() * gW1full;
      gB2 = gW2full * A2.transpose();
      gA2 = B2.transpose() * gW2full;
    }
    return loss;
  }
  double balancedness() const {
    return 0.5 * std::abs(A1.squaredNorm() - B1.squaredNorm()) + 0.5 * std::abs(A2.squaredNorm() - B2.squaredNorm());
  }
};

mat gaussian(int r, int c, float s, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, s);
  mat m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(rng);
  return m;
}

// Pretraining: AdamW on all weights, 60 epochs, batch 32 (no adapters: rank-0 placeholders).
mlp pretrain(const dataset& d) {
  std::mt19937 rng(12345);
  mlp m;
  m.W1 = gaussian(Hid, In, 1.0f / 8.0f, rng);
  m.W2 = gaussian(Out, Hid, 1.0f / 8.0f, rng);
  m.b1 = vec::Zero(Hid);
  m.b2 = vec::Zero(Out);
  m.A1 = mat::Zero(1, In);
  m.B1 = mat::Zero(Hid, 1);
  m.A2 = mat::Zero(1, Hid);
  m.B2 = mat::Zero(Out, 1);
  m.gW1 = mat::Zero(Hid, In);
  m.gW2 = mat::Zero(Out, Hid);
  m.gb1 = vec::Zero(Hid);
  m.gb2 = vec::Zero(Out);
  flatmin::param_set<float> ps;
  ps.add("W1", m.W1, m.gW1);
  ps.add("b1", m.b1, m.gb1, flatmin::tensor_options{.weight_decay = false});
  ps.add("W2", m.W2, m.gW2);
  ps.add("b2", m.b2, m.gb2, flatmin::tensor_options{.weight_decay = false});
  auto opt = flatmin::adamw(ps, flatmin::base::adamw{.lr = 3e-3, .weight_decay = 1e-3});
  std::vector<int> order(d.y.size());
  std::iota(order.begin(), order.end(), 0);
  for (int epoch = 0; epoch < 60; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t s = 0; s + 32 <= order.size(); s += 32) {
      const std::vector<int> idx(order.begin() + s, order.begin() + s + 32);
      opt.step([&] { return m.loss_grad(d, idx, true); });
    }
  }
  return m;
}

struct result {
  double acc, sec_per_epoch, balance;
};

template <class Make>
result finetune(const mlp& base_model, const dataset& train, const dataset& test, int rank, int epochs, unsigned seed,
                Make&& make) {
  std::mt19937 rng(seed);
  mlp m = base_model;
  // Standard LoRA initialisation: A Gaussian, B = 0 (so W + B·A = W): maximally unbalanced.
  m.A1 = gaussian(rank, In, 1.0f / std::sqrt(float(In)), rng);
  m.A2 = gaussian(rank, Hid, 1.0f / std::sqrt(float(Hid)), rng);
  m.B1 = mat::Zero(Hid, rank);
  m.B2 = mat::Zero(Out, rank);
  m.gA1 = mat::Zero(rank, In);
  m.gA2 = mat::Zero(rank, Hid);
  m.gB1 = mat::Zero(Hid, rank);
  m.gB2 = mat::Zero(Out, rank);
  const auto r = static_cast<std::size_t>(rank);
  flatmin::param_set<float> ps;  // only the adapters are trained; W1, W2 frozen (W + 1·B·A)
  ps.add_lora_pair("hidden", m.A1.data(), m.gA1.data(), {r, std::size_t(In)}, m.B1.data(), m.gB1.data(),
                   {std::size_t(Hid), r}, flatmin::lora_base<float>{m.W1.data(), 1.0});
  ps.add_lora_pair("out", m.A2.data(), m.gA2.data(), {r, std::size_t(Hid)}, m.B2.data(), m.gB2.data(),
                   {std::size_t(Out), r}, flatmin::lora_base<float>{m.W2.data(), 1.0});
  const std::size_t steps = static_cast<std::size_t>(epochs) * (train.y.size() / 16);
  auto opt = make(ps, steps);
  std::vector<int> order(train.y.size());
  std::iota(order.begin(), order.end(), 0);
  double seconds = 0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t s = 0; s + 16 <= order.size(); s += 16) {
      const std::vector<int> idx(order.begin() + s, order.begin() + s + 16);
      opt.step([&] { return m.loss_grad(train, idx, false); });
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return {m.accuracy(test), seconds / epochs, m.balancedness()};
}

std::vector<unsigned> parse_list(const std::string& s) {
  std::vector<unsigned> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(static_cast<unsigned>(std::stoul(item)));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int rank = 4, epochs = 40;
  double rho = 0.05, flat_rho = 0.05, lr = 1e-2, noise = 0.2;
  std::vector<unsigned> seeds{1, 2, 3, 4, 5};
  std::string path = std::string(FLATMIN_DIGITS_CSV), base_name = "adamw";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--rank") rank = std::stoi(v);
    else if (a == "--epochs") epochs = std::stoi(v);
    else if (a == "--rho") rho = std::stod(v);
    else if (a == "--flat-rho") flat_rho = std::stod(v);
    else if (a == "--lr") lr = std::stod(v);
    else if (a == "--noise") noise = std::stod(v);
    else if (a == "--seeds") seeds = parse_list(v);
    else if (a == "--data") path = v;
    else if (a == "--base") base_name = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  const dataset all = load_digits(path);
  // Even rows: pretraining. Odd rows: the shifted task, 2/3 training (noisy labels), 1/3 test.
  std::vector<int> pre_idx, ft_idx, test_idx;
  for (int j = 0; j < static_cast<int>(all.y.size()); ++j) {
    if (j % 2 == 0) pre_idx.push_back(j);
    else if ((j / 2) % 3 != 2) ft_idx.push_back(j);
    else test_idx.push_back(j);
  }
  const dataset pre = subset(all, pre_idx);
  dataset ft = subset(all, ft_idx), test = subset(all, test_idx);
  translate(ft);
  translate(test);
  std::mt19937 noise_rng(99);
  int flipped = 0;
  for (int& y : ft.y)
    if (std::uniform_real_distribution<double>(0, 1)(noise_rng) < noise) {
      y = (y + 1 + static_cast<int>(noise_rng() % 9)) % 10;
      ++flipped;
    }
  const mlp base_model = pretrain(pre);
  dataset pre_test = test;  // the un-translated test images, for reference
  pre_test.X = subset(all, test_idx).X;
  std::printf("digits: %zu pretraining, %zu fine-tuning (%d labels flipped), %zu test images\n", pre.y.size(),
              ft.y.size(), flipped, test.y.size());
  std::printf("pretrained MLP 64-%d-10: test accuracy %.3f on the original images, %.3f on the shifted ones\n", Hid,
              base_model.accuracy(pre_test), base_model.accuracy(test));
  std::printf("fine-tuning rank-%d LoRA adapters only (%d trainable parameters), %d epochs, batch 16, %s lr %g, "
              "rho %g (Flat-LoRA %g, cosine ramp over the run)\n\n",
              rank, rank * (In + Hid) + rank * (Hid + Out), epochs, base_name.c_str(), lr, rho, flat_rho);

  struct row {
    std::string name;
    std::vector<result> r;
  };
  std::vector<row> rows;
  // The same three runs over either base optimizer.
  auto compare = [&](auto base, const std::string& b) {
    rows = {{b, {}}, {"sam (" + b + ")", {}}, {"bar (" + b + ")", {}}, {"flat-lora (" + b + ")", {}}};
    for (unsigned seed : seeds) {
      rows[0].r.push_back(finetune(base_model, ft, test, rank, epochs, seed,
                                   [&](auto& ps, std::size_t) { return flatmin::plain(ps, base); }));
      rows[1].r.push_back(finetune(base_model, ft, test, rank, epochs, seed,
                                   [&](auto& ps, std::size_t) { return flatmin::sam(ps, base, {.rho = rho}); }));
      rows[2].r.push_back(finetune(base_model, ft, test, rank, epochs, seed,
                                   [&](auto& ps, std::size_t) { return flatmin::bar(ps, base, {.rho = rho}); }));
      // the official cosine ramp over the whole run
      rows[3].r.push_back(finetune(base_model, ft, test, rank, epochs, seed, [&](auto& ps, std::size_t steps) {
        return flatmin::flat_lora(ps, base, {.rho = flat_rho, .ramp_steps = steps, .seed = seed});
      }));
      std::printf("  seed %u: accuracy %s %.3f, sam %.3f, bar %.3f, flat-lora %.3f\n", seed, b.c_str(),
                  rows[0].r.back().acc, rows[1].r.back().acc, rows[2].r.back().acc, rows[3].r.back().acc);
    }
  };
  if (base_name == "sgd")
    compare(flatmin::base::sgd{.lr = lr, .momentum = 0.9}, "sgd");
  else
    compare(flatmin::base::adamw{.lr = lr, .weight_decay = 0.0}, "adamw");
  std::printf("\n| method | test accuracy, mean ± sd over %zu seeds | ms per epoch | final |B| |\n|---|---|---|---|\n",
              seeds.size());
  for (const auto& rw : rows) {
    double a = 0, a2 = 0, t = 0, b = 0;
    for (const auto& x : rw.r) {
      a += x.acc;
      a2 += x.acc * x.acc;
      t += x.sec_per_epoch;
      b += x.balance;
    }
    const double n = double(rw.r.size());
    const double sd = n > 1 ? std::sqrt(std::max(0.0, (a2 - a * a / n) / (n - 1))) : 0.0;
    std::printf("| %s | %.3f ± %.3f | %.2f | %.3f |\n", rw.name.c_str(), a / n, sd, 1e3 * t / n, b / n);
  }
  return 0;
}
