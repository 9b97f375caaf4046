#pragma once
/// @file torch.hpp
/// libtorch adapter (CMake target `flatmin::torch`): binds a module's parameters, or a list of
/// tensors, as a `param_set`, checks before every use that torch has not moved or freed what flatmin
/// points at, and wraps a flatmin optimizer in torch::optim's shape (`step(closure)`).
///
///     auto opt = flatmin::libtorch::optimizer(flatmin::libtorch::binding<float>(*net), [](const auto& ps) {
///       return flatmin::sam(ps, flatmin::base::sgd{.lr = 0.1}, {.rho = 0.05});
///     });
///     opt.step([&] { auto loss = torch::mse_loss(net->forward(x), y); loss.backward(); return loss; });
///
/// The namespace is `flatmin::libtorch`, not `flatmin::torch`: inside namespace flatmin an unqualified
/// `torch::Tensor` would then name flatmin's namespace instead of libtorch's.
///
/// Scope: float, double, bfloat16 and half tensors on the CPU (host memory, as `backend::eigen`
/// reads it): `binding<float>`, `<double>`, `<flatmin::bfloat16>`, `<flatmin::half>`. A 16-bit
/// binding gives a `param_set<bfloat16>` (weights and gradients 16-bit, as torch keeps them); the
/// factories then keep the optimizer state in float (params/precision.hpp), and
/// `optimizer_options::master_weights` / `loss_scale` (fp16) work as on any 16-bit param_set: with
/// the loss scaler the closure multiplies the loss by `opt.inner().loss_scale()` before `backward()`.
///
/// CUDA tensors: in a translation unit compiled by nvcc against a CUDA libtorch (then
/// `FLATMIN_TORCH_CUDA` is defined), a binding of CUDA tensors gives views of device memory, which
/// `backend::thrust` (nvcc's default backend) runs on. Every call of the optimizer wrapper
/// (construction, step, ascend, second_point, descend, cancel, save, load, rebind) makes the
/// tensors' device current and runs flatmin's passes on torch's current stream of that device
/// (`backend::thrust::stream_scope`), so they are ordered after the forward and backward queued
/// there; each pass returns when its work is done. Elsewhere CUDA tensors are refused with a
/// `usage_error`. CPU tensors in an nvcc translation unit need `backend::eigen` named in the factory.
///
/// The wrapper is a torch::optim::Optimizer: param groups (per-group lr and weight decay, as the
/// core's per-tensor multipliers), LRSchedulers, and save / load through torch::serialize archives.
///
/// Safety: torch may free or replace the memory of a parameter or gradient behind flatmin's back
/// (`zero_grad(set_to_none=true)`, `p.mutable_grad() = {}`, `module->to(...)`, `torch::load`, a
/// backward with create_graph). The binding keeps a reference to every storage it registered, so
/// that memory is never freed under flatmin, and `check()` (run by the wrapper before every
/// ascend / descend / step) throws `usage_error` naming the tensor whose storage, size, dtype,
/// device or layout changed. `rebind()` re-points after such a change (same names and sizes).

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "config.hpp"
#include "numeric/reinterpret.hpp"
#include "optimizer/report.hpp"
#include "params/param_set.hpp"

#if defined(__CUDACC__) && !defined(FLATMIN_TORCH_NO_CUDA)
#include "backend/thrust.hpp"
#if defined(FLATMIN_THRUST_IS_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
/// Defined where the adapter binds CUDA tensors (nvcc, Thrust on CUDA, `FLATMIN_TORCH_NO_CUDA` unset).
#define FLATMIN_TORCH_CUDA 1
#endif
#endif

namespace flatmin::libtorch {

/// Tensors with their names, in registration order.
using named_tensors = std::vector<std::pair<std::string, torch::Tensor>>;

/// Per-tensor options chosen from a tensor's name (e.g. no weight decay for biases).
using options_fn = std::function<tensor_options(const std::string& name, const torch::Tensor& tensor)>;

/// The module's trainable parameters (`requires_grad`), recursively, with their dotted names.
inline named_tensors trainable_parameters(const torch::nn::Module& module) {
  named_tensors out;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  return out;
}

/// A list of tensors, named by position ("0", "1", ...), as torch names a ParameterList.
inline named_tensors positional(const std::vector<torch::Tensor>& tensors) {
  named_tensors out;
  for (std::size_t i = 0; i < tensors.size(); ++i) out.emplace_back(std::to_string(i), tensors[i]);
  return out;
}

namespace detail {

inline std::string quote(const std::string& s) { return flatmin::detail::quote(s); }

/// The dtype mapping, in one place: flatmin element type T ↔ torch dtype, its name in messages,
/// and the c10 type torch's `data_ptr<>` is asked for (the 16-bit ones are viewed through
/// `storage_cast`: the same bits, no copy). Nothing else in this file names a dtype.
template <class T>
struct dtype_of;  // undefined: T is not bindable
template <>
struct dtype_of<float> {
  static constexpr c10::ScalarType value = c10::ScalarType::Float;
  static constexpr const char* name = "float";
  static constexpr const char* cpp = "float";
  using c10_type = float;
};
template <>
struct dtype_of<double> {
  static constexpr c10::ScalarType value = c10::ScalarType::Double;
  static constexpr const char* name = "double";
  static constexpr const char* cpp = "double";
  using c10_type = double;
};
template <>
struct dtype_of<flatmin::bfloat16> {
  static constexpr c10::ScalarType value = c10::ScalarType::BFloat16;
  static constexpr const char* name = "bfloat16";
  static constexpr const char* cpp = "flatmin::bfloat16";
  using c10_type = c10::BFloat16;
};
template <>
struct dtype_of<flatmin::half> {
  static constexpr c10::ScalarType value = c10::ScalarType::Half;
  static constexpr const char* name = "half";
  static constexpr const char* cpp = "flatmin::half";
  using c10_type = c10::Half;
};
template <class T>
concept bindable = requires { dtype_of<T>::value; };

/// The bindable type that maps to `t`: its dtype name and its C++ name (else nullptrs).
struct bindable_names {
  const char* name = nullptr;
  const char* cpp = nullptr;
};
template <class... Ts>
bindable_names bindable_among(c10::ScalarType t) {
  bindable_names n;
  const auto found = [&](const auto& d) { return t == d.value && (n = {d.name, d.cpp}, true); };
  static_cast<void>((found(dtype_of<Ts>{}) || ...));
  return n;
}
inline bindable_names bindable_of(c10::ScalarType t) {
  return bindable_among<float, double, flatmin::bfloat16, flatmin::half>(t);
}

/// A dense tensor's elements as T (its dtype checked by the caller).
template <class T>
T* elements(const torch::Tensor& t) {
  using C = typename dtype_of<T>::c10_type;
  if constexpr (std::is_same_v<C, T>)
    return t.data_ptr<T>();
  else
    return flatmin::storage_cast<T>(t.data_ptr<C>());
}

inline std::string dtype_name(c10::ScalarType t) {
  const char* n = bindable_of(t).name;
  return n ? n : c10::toString(t);
}

inline std::string device_name(const c10::Device& d) { return d.str(); }

[[noreturn]] inline void fail(const std::string& what) { throw usage_error("flatmin::libtorch: " + what); }

template <class T>
constexpr c10::ScalarType scalar_type() {
  return dtype_of<T>::value;
}

/// One dtype and one device over all tensors, and the ones flatmin can bind: otherwise a
/// usage_error naming a tensor of each kind.
template <class T>
void check_uniform(const named_tensors& tensors) {
  std::map<c10::ScalarType, std::string> dtypes;
  std::map<std::string, std::string> devices;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) fail("tensor " + quote(name) + " is undefined");
    dtypes.emplace(t.scalar_type(), name);
    devices.emplace(device_name(t.device()), name);
  }
  if (dtypes.size() > 1) {
    std::string list;
    for (const auto& [dtype, name] : dtypes)
      list += (list.empty() ? "" : ", ") + quote(name) + " is " + dtype_name(dtype);
    fail("mixed dtypes (" + list + "): bind the tensors of each dtype separately");
  }
  if (devices.size() > 1) {
    std::string list;
    for (const auto& [device, name] : devices)
      list += (list.empty() ? "" : ", ") + quote(name) + " is on " + device;
    fail("mixed devices (" + list + "): one binding holds tensors of one device");
  }
  for (const auto& [dtype, name] : dtypes)
    if (dtype != scalar_type<T>()) {
      if (const char* cpp = bindable_of(dtype).cpp)
        fail("tensor " + quote(name) + " is " + dtype_name(dtype) + ", this binding is for " +
             dtype_name(scalar_type<T>()) + ": use binding<" + cpp + ">");
      fail("tensor " + quote(name) + " has dtype " + dtype_name(dtype) +
           ": the adapter binds float, double, bfloat16 and half tensors");
    }
  if (tensors.empty()) return;
  const auto& [name, t] = tensors.front();
#if !defined(FLATMIN_TORCH_CUDA)
  if (t.is_cuda())
    fail("tensor " + quote(name) + " is on " + device_name(t.device()) +
         ": CUDA tensors are bound only in code compiled by nvcc against a CUDA libtorch "
         "(FLATMIN_TORCH_CUDA), where backend::thrust runs on them; this translation unit binds CPU "
         "tensors");
#endif
  if (!t.device().is_cpu() && !t.is_cuda())
    fail("tensor " + quote(name) + " is on " + device_name(t.device()) +
         ": only CPU and CUDA tensors can be bound");
}

/// While alive, under FLATMIN_TORCH_CUDA and for a CUDA device: that device is current and
/// backend::thrust's passes run on torch's current stream of it. Otherwise nothing.
class device_scope {
 public:
  explicit device_scope([[maybe_unused]] const c10::Device& d) {
#if defined(FLATMIN_TORCH_CUDA)
    if (d.is_cuda()) {
      guard_.emplace(d);
      stream_.emplace(c10::cuda::getCurrentCUDAStream(d.index()).stream());
    }
#endif
  }

 private:
#if defined(FLATMIN_TORCH_CUDA)
  std::optional<c10::cuda::CUDAGuard> guard_;  // first in, last out
  std::optional<flatmin::backend::thrust::stream_scope> stream_;
#endif
};

}  // namespace detail

/// A `param_set<T>` over libtorch tensors that knows what it registered. T is float, double,
/// flatmin::bfloat16 (torch's kBFloat16) or flatmin::half (kHalf).
///
/// Each tensor must be dense (strided), contiguous, of dtype T and on the CPU (or a CUDA device
/// under FLATMIN_TORCH_CUDA); all of one dtype and device. An undefined gradient is allocated
/// (zeros, same dtype and device) and set as `.grad`. Violations throw `usage_error` naming the
/// tensor. The binding holds the storages it registered:
/// copies of it share them; keep one binding per optimizer.
template <class T>
class binding {
  static_assert(detail::bindable<T>,
                "flatmin::libtorch::binding: T must be float, double, flatmin::bfloat16 or flatmin::half");

 public:
  using value_type = T;

  /// The module's trainable parameters (`requires_grad`), names as `named_parameters()` gives them.
  explicit binding(const torch::nn::Module& module, options_fn options = {})
      : binding(trainable_parameters(module), std::move(options)) {}
  /// Tensors named by position ("0", "1", ...).
  explicit binding(const std::vector<torch::Tensor>& tensors, options_fn options = {})
      : binding(positional(tensors), std::move(options)) {}
  /// Tensors with their names.
  explicit binding(const named_tensors& tensors, options_fn options = {}) : options_(std::move(options)) {
    detail::check_uniform<T>(tensors);
    for (const auto& [name, t] : tensors) entries_.push_back(make_entry(name, t));
    build();
  }

  /// The views flatmin's factories take (`flatmin::sam(binding.params(), ...)`). A plain
  /// optimizer built from them must be guarded by `check()` before each call; `optimizer` does it.
  const param_set<T>& params() const { return params_; }
  std::size_t size() const { return entries_.size(); }
  const std::string& name(std::size_t i) const { return entries_.at(i).name; }
  const torch::Tensor& parameter(std::size_t i) const { return entries_.at(i).param; }
  /// The device of the bound tensors (the CPU for an empty binding).
  c10::Device device() const {
    return entries_.empty() ? c10::Device(c10::kCPU) : entries_.front().device;
  }
  /// Where params()' views point: device memory for CUDA tensors, else host memory.
  memory_space space() const { return device().is_cuda() ? memory_space::device : memory_space::host; }

  /// Throws `usage_error` naming the first parameter or gradient that no longer has the storage,
  /// size, dtype, device or layout it was registered with. Reads tensor metadata only.
  void check() const {
    for (const auto& e : entries_) {
      const torch::Tensor& p = e.param;
      const std::string who = "parameter " + detail::quote(e.name);
      const std::string again = ": call rebind() (flatmin did not touch it)";
      if (p.scalar_type() != e.dtype)
        detail::fail(who + " changed dtype from " + detail::dtype_name(e.dtype) + " to " +
                     detail::dtype_name(p.scalar_type()) + " since it was bound (module->to()?)" + again);
      if (p.device() != e.device)
        detail::fail(who + " moved from " + detail::device_name(e.device) + " to " +
                     detail::device_name(p.device()) + since_bound() + again);
      if (p.layout() != torch::kStrided || !p.is_contiguous())
        detail::fail(who + " is no longer dense and contiguous" + again);
      if (p.numel() != e.numel) detail::fail(who + " changed size" + since_bound() + again);
      if (p.data_ptr() != e.value_ptr)
        detail::fail(who + " has new storage (module->to(), torch::load, set_data?)" + since_bound() + again);
      const torch::Tensor& g = p.grad();
      const std::string gwho = "the gradient of " + detail::quote(e.name);
      if (!g.defined())
        detail::fail(gwho +
                     " is undefined (zero_grad(set_to_none=true) or mutable_grad() = {}?): zero "
                     "gradients with the adapter's zero_grad(), which zeroes in place, or call rebind()");
      if (g.unsafeGetTensorImpl() != e.grad.unsafeGetTensorImpl() || g.scalar_type() != e.dtype ||
          g.device() != e.device || g.layout() != torch::kStrided || !g.is_contiguous() ||
          g.numel() != e.numel || g.data_ptr() != e.grad_ptr)
        detail::fail(gwho +
                     " is not the tensor that was bound (a new .grad, or a backward with "
                     "create_graph?)" +
                     again);
    }
    for (const auto& p : pairs_) {
      if (!p.base.defined()) continue;
      const std::string who = "the base weight of LoRA pair " + detail::quote(p.name);
      const torch::Tensor& w = p.base;
      if (w.scalar_type() != entries_[p.a].dtype || w.device() != entries_[p.a].device ||
          w.layout() != torch::kStrided || !w.is_contiguous() || w.data_ptr() != p.base_ptr)
        detail::fail(who + " has new storage, dtype, device or layout" + since_bound() +
                     ": call rebind() (flatmin did not touch it)");
    }
  }

  /// Zeroes every registered gradient in place. A parameter whose `.grad` was set to none gets its
  /// registered gradient back; a `.grad` replaced by another tensor is left alone (`check()` names it).
  void zero_grad() {
    const torch::NoGradGuard no_grad;
    for (auto& e : entries_) {
      e.grad.zero_();
      if (!e.param.grad().defined()) e.param.mutable_grad() = e.grad;
    }
  }

  /// A binding over the same tensors as they are now (after `module->to()`, `torch::load`, a new
  /// `.grad`): the same names, sizes and dtype T, else `usage_error` saying what differs. This
  /// binding is left as it was.
  binding rebound() const {
    named_tensors now;
    for (const auto& e : entries_) now.emplace_back(e.name, e.param);
    return rebound(now);
  }
  /// The same from a new list (e.g. `trainable_parameters(*module)` of a rebuilt module).
  binding rebound(const named_tensors& tensors) const {
    if (tensors.size() != entries_.size())
      detail::fail("rebind(): " + std::to_string(tensors.size()) + " tensors, " +
                   std::to_string(entries_.size()) + " were bound");
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      if (tensors[i].first != entries_[i].name)
        detail::fail("rebind(): tensor " + std::to_string(i) + " is " + detail::quote(tensors[i].first) +
                     ", it was " + detail::quote(entries_[i].name));
      if (tensors[i].second.defined() && tensors[i].second.numel() != entries_[i].numel)
        detail::fail("rebind(): tensor " + detail::quote(entries_[i].name) + " has " +
                     std::to_string(tensors[i].second.numel()) + " elements, it had " +
                     std::to_string(entries_[i].numel));
    }
    binding fresh(tensors, options_);
    for (std::size_t i = 0; i < entries_.size(); ++i)  // param-group multipliers carry over
      fresh.entries_[i].options = entries_[i].options;
    fresh.pairs_ = pairs_;
    for (auto& p : fresh.pairs_)  // the same tensor handles: their current storage
      if (p.base.defined()) {
        const torch::Tensor& w = p.base;
        if (w.scalar_type() != fresh.entries_[p.a].dtype || w.device() != fresh.entries_[p.a].device ||
            w.layout() != torch::kStrided || !w.is_contiguous() || w.dim() != 2 ||
            w.size(0) != fresh.entries_[p.b].param.size(0) || w.size(1) != fresh.entries_[p.a].param.size(1))
          detail::fail("rebind(): the base weight of LoRA pair " + detail::quote(p.name) +
                       " is no longer a dense, contiguous {out, in} tensor of the pair's dtype and device");
        p.keep_base = p.base.storage();
        p.base_ptr = p.base.data_ptr();
      }
    fresh.build();
    return fresh;
  }
  /// Re-points this binding (see rebound()). An optimizer built from the old params() still points
  /// at the old storages: `optimizer::rebind()` rebuilds it.
  void rebind() { *this = rebound(); }

  /// Sets tensor i's `tensor_options::lr_scale`, `weight_decay_scale` and `rho_scale` (what
  /// `optimizer`'s param groups use) for the params() built from now on; an optimizer already built
  /// keeps its own.
  void set_scales(std::size_t i, double lr_scale, double weight_decay_scale, double rho_scale = 1.0) {
    auto& o = entries_.at(i).options;
    const tensor_options before = o;
    o.lr_scale = lr_scale;
    o.weight_decay_scale = weight_decay_scale;
    o.rho_scale = rho_scale;
    try {
      build();  // param_set::add checks the values
    } catch (...) {
      o = before;
      throw;
    }
  }
  const tensor_options& options(std::size_t i) const { return entries_.at(i).options; }

  /// Registers the bound tensors named `a` and `b` as the factors of a LoRA pair (update = B·A),
  /// as `param_set::add_lora_pair` does: `regularize::balancedness` (BAR) sees the pair, every other
  /// policy two ordinary tensors. In params() they are `name + ".A"` / `".B"`, placed at A's
  /// position, with A's tensor_options for both. usage_error for an unknown or already paired tensor.
  void add_lora_pair(const std::string& name, const std::string& a, const std::string& b) {
    add_pair(name, a, b, torch::Tensor(), 1.0);
  }

  /// The same with the pair's frozen base weight W (not bound: no gradient, not trained), for
  /// Flat-LoRA (perturb::flat_lora), which perturbs W around the backward: the merged weight is
  /// W + scale·B·A with A {r, in}, B {out, r}, W {out, in} (torch::nn::Linear's weight and a LoRA
  /// adapter's lora_A, lora_B). W must be dense, contiguous, of dtype T and on the binding's device
  /// (usage_error naming it otherwise); `check()` then guards it like the bound tensors.
  void add_lora_pair(const std::string& name, const std::string& a, const std::string& b,
                     const torch::Tensor& base, double scale) {
    if (!base.defined())
      detail::fail("add_lora_pair(" + detail::quote(name) + "): the base weight is undefined");
    add_pair(name, a, b, base, scale);
  }

 private:
  void add_pair(const std::string& name, const std::string& a, const std::string& b,
                const torch::Tensor& base, double scale) {
    const std::size_t ia = index_of(a), ib = index_of(b);
    if (ia == ib) detail::fail("add_lora_pair(" + detail::quote(name) + "): A and B are the same tensor");
    for (const auto& p : pairs_)
      if (p.a == ia || p.b == ia || p.a == ib || p.b == ib)
        detail::fail("add_lora_pair(" + detail::quote(name) + "): " + detail::quote(a) + " or " +
                     detail::quote(b) +
                     " is already in pair " + detail::quote(p.name));
    pair_entry pe{name, ia, ib, base, scale, {}, nullptr};
    if (base.defined()) {
      const std::string who = "add_lora_pair(" + detail::quote(name) + "): the base weight";
      const auto& ea = entries_[ia];
      const auto& eb = entries_[ib];
      if (base.layout() != torch::kStrided || !base.is_contiguous())
        detail::fail(who + " is not dense and contiguous");
      if (base.scalar_type() != ea.dtype || base.device() != ea.device)
        detail::fail(who + " is " + detail::dtype_name(base.scalar_type()) + " on " +
                     detail::device_name(base.device()) + ", the pair " + detail::dtype_name(ea.dtype) +
                     " on " + detail::device_name(ea.device));
      if (ea.param.dim() != 2 || eb.param.dim() != 2 || base.dim() != 2 ||
          base.size(0) != eb.param.size(0) || base.size(1) != ea.param.size(1) ||
          eb.param.size(1) != ea.param.size(0))
        detail::fail(who + " must be {out, in} with A {r, in} and B {out, r}");
      pe.keep_base = base.storage();
      pe.base_ptr = base.data_ptr();
    }
    pairs_.push_back(std::move(pe));
    try {
      build();
    } catch (...) {
      pairs_.pop_back();
      throw;
    }
  }

  struct entry {
    std::string name;
    torch::Tensor param;                 ///< the user's tensor (same TensorImpl: sees set_data, set_, .to())
    torch::Tensor grad;                  ///< the gradient tensor that was registered
    c10::Storage keep_value, keep_grad;  ///< the registered memory stays allocated while bound
    const void* value_ptr;
    const void* grad_ptr;
    std::int64_t numel;
    c10::ScalarType dtype;
    c10::Device device;
    tensor_options options;
  };

  static std::string since_bound() { return " since it was bound"; }

  entry make_entry(const std::string& name, const torch::Tensor& p) const {
    const std::string who = "tensor " + detail::quote(name);
    if (p.layout() != torch::kStrided)
      detail::fail(who + " is not dense (layout " + c10::toString(p.layout()) +
                   "): flatmin needs strided tensors");
    if (!p.is_contiguous())
      detail::fail(who +
                   " is not contiguous: flatmin would update the wrong elements (make it contiguous, e.g. "
                   "p.set_data(p.contiguous()), before binding)");
    if (p.numel() == 0) detail::fail(who + " has no elements");
    torch::Tensor g = p.grad();
    if (!g.defined()) {
      g = torch::zeros(p.sizes(), p.options().requires_grad(false));
      const torch::NoGradGuard no_grad;
      // mutable_grad() on a const Tensor handle: the handle is shared, the gradient is the tensor's.
      const_cast<torch::Tensor&>(p).mutable_grad() = g;
    } else {
      const std::string gwho = "the gradient of " + detail::quote(name);
      if (g.layout() != torch::kStrided) detail::fail(gwho + " is sparse: flatmin needs dense gradients");
      if (g.scalar_type() != p.scalar_type() || g.device() != p.device())
        detail::fail(gwho + " is " + detail::dtype_name(g.scalar_type()) + " on " +
                     detail::device_name(g.device()) + ", the tensor " + detail::dtype_name(p.scalar_type()) +
                     " on " + detail::device_name(p.device()));
      if (!g.sizes().equals(p.sizes())) detail::fail(gwho + " has another shape than the tensor");
      if (!g.is_contiguous()) detail::fail(gwho + " is not contiguous");
    }
    tensor_options o = options_ ? options_(name, p) : tensor_options{};
    return entry{
        name,       p, g, p.storage(), g.storage(), p.data_ptr(), g.data_ptr(), p.numel(), p.scalar_type(),
        p.device(), o};
  }

  static std::vector<std::int64_t> shape_of(const entry& e) {
    std::vector<std::int64_t> shape = e.param.sizes().vec();
    if (shape.empty()) shape.push_back(1);  // a 0-dim tensor is one value
    return shape;
  }

  void build() {
    param_set<T> ps;
    const memory_space in = space();
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const entry& e = entries_[i];
      const auto pair =
          std::find_if(pairs_.begin(), pairs_.end(), [&](const auto& p) { return p.a == i || p.b == i; });
      if (pair == pairs_.end()) {
        ps.add(e.name, detail::elements<T>(e.param), detail::elements<T>(e.grad), shape_of(e), e.options, in);
      } else if (pair->a == i) {  // the pair at A's place; B is skipped where it comes
        const entry& b = entries_[pair->b];
        if (pair->base.defined())
          ps.add_lora_pair(pair->name, detail::elements<T>(e.param), detail::elements<T>(e.grad), shape_of(e),
                           detail::elements<T>(b.param), detail::elements<T>(b.grad), shape_of(b),
                           lora_base<T>{detail::elements<T>(pair->base), pair->scale}, e.options, in);
        else
          ps.add_lora_pair(pair->name, detail::elements<T>(e.param), detail::elements<T>(e.grad), shape_of(e),
                           detail::elements<T>(b.param), detail::elements<T>(b.grad), shape_of(b), e.options,
                           in);
      }
    }
    params_ = std::move(ps);
  }

  std::size_t index_of(const std::string& name) const {
    for (std::size_t i = 0; i < entries_.size(); ++i)
      if (entries_[i].name == name) return i;
    detail::fail("no bound tensor is named " + detail::quote(name));
  }

  struct pair_entry {
    std::string name;
    std::size_t a, b;
    torch::Tensor base;       ///< the frozen base weight (undefined: none)
    double scale = 1;         ///< s of W + s·B·A
    c10::Storage keep_base;   ///< its registered memory stays allocated while bound
    const void* base_ptr;     ///< where it was registered
  };
  std::vector<pair_entry> pairs_;

  std::vector<entry> entries_;
  options_fn options_;
  param_set<T> params_;
};

namespace detail {
/// The loss a closure returned: a one-element tensor or a number.
template <class R>
double loss_value(R&& r) {
  if constexpr (std::is_convertible_v<R, double>) {
    return static_cast<double>(r);
  } else {
    static_assert(std::is_same_v<std::remove_cvref_t<R>, torch::Tensor>,
                  "flatmin::libtorch: a step closure returns the loss as a torch::Tensor or a number");
    if (!r.defined() || r.numel() != 1)
      fail("the step closure must return the loss: a one-element tensor, or a number");
    return r.template item<double>();
  }
}
}  // namespace detail

/// A torch-style parameter group: tensors of the binding (the same tensor objects), with the
/// group's learning rate, weight decay and perturbation radius ρ (unset: the flatmin optimizer's
/// own).
struct param_group {
  std::vector<torch::Tensor> params;
  std::optional<double> lr{};
  std::optional<double> weight_decay{};
  std::optional<double> rho{};
};

/// The options torch::optim sees for a group (`param_groups()[i].options()`): what an
/// LRScheduler reads and sets through get_lr() / set_lr().
struct group_options : torch::optim::OptimizerCloneableOptions<group_options> {
  double lr = 0;
  double weight_decay = 0;
  group_options(double l, double wd) : lr(l), weight_decay(wd) {}
  double get_lr() const override { return lr; }
  void set_lr(const double l) override { lr = l; }
};

/// A flatmin optimizer over a `binding`, in torch::optim's shape, and a torch::optim::Optimizer
/// (so that torch::optim::StepLR and other LRSchedulers, `torch::save(opt, ...)` and
/// `torch::load(opt, ...)` work on it). `make(params)` builds the flatmin optimizer from a
/// `param_set<T>` (any factory: `flatmin::sam`, `fsam`, `adamw`, ...); it is called again by
/// `rebind()`, which carries the optimizer's state and options over.
///
/// `step(closure)`: the closure runs forward and backward and returns the loss (a one-element
/// tensor or a number). The gradients are zeroed in place before each backward, so the gradient
/// at w cannot leak into the one at w + ε, whether or not the closure zeroes them itself.
///
/// Param groups: per-group lr and weight decay become per-tensor multipliers (`tensor_options::
/// lr_scale`, `weight_decay_scale`) of the base optimizer's lr and weight decay, which are set
/// to the largest group's. The multipliers are fixed when the optimizer is built: a scheduler
/// (or the user) may change the groups' lr and weight decay between steps as long as every group
/// keeps its ratio to the others (StepLR does: it multiplies each by the same γ); otherwise the
/// next step throws usage_error. A group's ρ is the official SAM's per-group ρ (davda54/sam:
/// scale = group["rho"] / (grad_norm + 1e-12), one norm over every group): the perturbation runs
/// at the largest group's ρ and each tensor's ε is scaled by its group's share
/// (`tensor_options::rho_scale`); a ρ schedule scales every group alike. Group ρ is fixed when
/// the optimizer is built. The other perturbation options are the optimizer's.
template <class T, class Make>
class optimizer : public torch::optim::Optimizer {
 public:
  using inner_type = std::invoke_result_t<Make&, const param_set<T>&>;

  /// One group holding every bound tensor, with the flatmin optimizer's lr and weight decay.
  optimizer(binding<T> bound, Make make) : optimizer(std::move(bound), {}, std::move(make)) {}

  /// Param groups: every bound tensor in exactly one group (else usage_error naming it).
  optimizer(binding<T> bound, std::vector<param_group> groups, Make make)
      : torch::optim::Optimizer(std::vector<torch::optim::OptimizerParamGroup>{},
                                std::make_unique<group_options>(0.0, 0.0)),
        binding_(std::move(bound)),
        make_(std::move(make)) {
    const detail::device_scope on(binding_.device());
    inner_.emplace(make_(binding_.params()));
    const double lr0 = lr_of(*inner_), wd0 = wd_of(*inner_), rho0 = rho_of(*inner_);
    if (groups.empty()) {
      param_group all;
      for (std::size_t i = 0; i < binding_.size(); ++i) all.params.push_back(binding_.parameter(i));
      groups.push_back(std::move(all));
    }
    // which group each bound tensor is in
    std::vector<int> group_of(binding_.size(), -1);
    for (std::size_t g = 0; g < groups.size(); ++g)
      for (const auto& t : groups[g].params) {
        std::size_t i = 0;
        while (i < binding_.size() &&
               binding_.parameter(i).unsafeGetTensorImpl() != t.unsafeGetTensorImpl())
          ++i;
        if (i == binding_.size())
          detail::fail("param group " + std::to_string(g) + " holds a tensor the binding does not have");
        if (group_of[i] >= 0)
          detail::fail("tensor " + detail::quote(binding_.name(i)) + " is in param groups " +
                       std::to_string(group_of[i]) + " and " + std::to_string(g));
        group_of[i] = static_cast<int>(g);
      }
    for (std::size_t i = 0; i < binding_.size(); ++i)
      if (group_of[i] < 0)
        detail::fail("tensor " + detail::quote(binding_.name(i)) + " is in no param group");
    // the base optimizer runs at the largest group's lr and weight decay; the others are multiples
    // (and the perturbation at the largest group's ρ)
    double lr_max = 0, wd_max = 0, rho_max = 0;
    for (const auto& g : groups) {
      const double lr = g.lr.value_or(lr0), wd = g.weight_decay.value_or(wd0), rho = g.rho.value_or(rho0);
      if (!(lr > 0 && std::isfinite(lr))) detail::fail("a param group's lr must be finite and > 0");
      if (!(wd >= 0 && std::isfinite(wd)))
        detail::fail("a param group's weight_decay must be finite and >= 0");
      if (wd > 0 && !has_weight_decay) detail::fail("param group weight_decay: the base optimizer has none");
      if (g.rho && !has_rho)
        detail::fail("param group rho: this optimizer perturbs no bound tensor by a radius rho");
      if (!(rho >= 0 && std::isfinite(rho))) detail::fail("a param group's rho must be finite and >= 0");
      lr_max = std::max(lr_max, lr);
      wd_max = std::max(wd_max, wd);
      rho_max = std::max(rho_max, rho);
    }
    std::vector<double> rho_ratio;
    for (const auto& g : groups) {
      const double lr = g.lr.value_or(lr0), wd = g.weight_decay.value_or(wd0);
      lr_ratio_.push_back(lr / lr_max);
      wd_ratio_.push_back(wd_max > 0 ? wd / wd_max : 1.0);
      rho_ratio.push_back(rho_max > 0 ? g.rho.value_or(rho0) / rho_max : 1.0);
      applied_.push_back({lr, wd});
      torch::optim::OptimizerParamGroup pg(g.params, std::make_unique<group_options>(lr, wd));
      add_param_group(pg);
      // libtorch 2.x's add_param_group keeps only the options types it knows (SGDOptions, ...):
      // any other is replaced by the defaults (lr 0 here). Set the group's own again.
      param_groups().back().set_options(std::make_unique<group_options>(lr, wd));
    }
    for (std::size_t i = 0; i < binding_.size(); ++i)
      binding_.set_scales(i, lr_ratio_[group_of[i]], wd_ratio_[group_of[i]], rho_ratio[group_of[i]]);
    inner_type next = make_(binding_.params());
    copy_options(next, *inner_);
    set_base(next, lr_max, wd_max);
    if constexpr (has_rho) next.perturbation().rho = rho_max;
    inner_.reset();
    inner_.emplace(std::move(next));
  }

  /// Zeroes the gradients, calls the closure at w (and at w + ε when the step perturbs), then the
  /// base step. Returns the inner optimizer's report.
  ///
  /// A closure object that also has `functional_backward()` (forward at the current weights,
  /// back-propagate the cotangent the clean pass saved: flatmin::functional_objective) drives
  /// Functional-SAM; its gradients are zeroed before that backward too.
  template <class Closure>
  decltype(auto) step(Closure&& closure, const step_args& args = {}) {
    binding_.check();
    const detail::device_scope on(binding_.device());
    sync_groups();
    guarded<std::remove_reference_t<Closure>> objective{binding_, closure};
    if constexpr (requires { closure.functional_backward(); }) {
      guarded_functional<std::remove_reference_t<Closure>> functional{objective};
      return inner_->step(functional, args);
    } else {
      return inner_->step(objective, args);
    }
  }

  /// torch::optim::Optimizer's step: the loss at w, as a tensor. The closure is required (the
  /// two-call protocol is ascend() / descend()).
  torch::Tensor step(LossClosure closure = nullptr) override {
    if (!closure) detail::fail("step() needs the closure (or use ascend() / descend())");
    if constexpr (needs_functional_objective) {
      detail::fail("step(LossClosure) cannot drive Functional-SAM: pass step() an object with "
                   "functional_backward() (a flatmin::functional_objective)");
    }
    torch::Tensor first;
    if constexpr (!needs_functional_objective)
      step([&]() -> torch::Tensor {
        torch::Tensor loss = closure();
        if (!first.defined()) first = loss.detach();
        return loss;
      });
    return first;
  }

  /// The two-call protocol with the binding checked first. The caller zeroes the gradients
  /// (`zero_grad()`) before each backward.
  decltype(auto) ascend(const step_args& args = {}) {
    binding_.check();
    const detail::device_scope on(binding_.device());
    sync_groups();
    return inner_->ascend(args);
  }
  /// SAMPa's middle call (flatmin::sampa: between the backward at w + ε and the one at the
  /// look-ahead point; the caller zeroes the gradients before each). A stale binding here cancels
  /// the step and throws.
  decltype(auto) second_point(const step_args& args = {})
    requires inner_type::two_points
  {
    const detail::device_scope on(binding_.device());
    try {
      binding_.check();
    } catch (...) {
      inner_->cancel();
      throw;
    }
    return inner_->second_point(args);
  }
  /// A stale binding here cancels the step (w restored into the registered memory) and throws.
  decltype(auto) descend(const step_args& args = {}) {
    const detail::device_scope on(binding_.device());
    try {
      binding_.check();
      if (!inner_->ascended()) sync_groups();
    } catch (...) {
      inner_->cancel();
      throw;
    }
    return inner_->descend(args);
  }
  void cancel() {
    const detail::device_scope on(binding_.device());
    inner_->cancel();
  }

  /// Zeroes the gradients in place (see binding::zero_grad).
  void zero_grad() { binding_.zero_grad(); }

  /// Re-points at the tensors as they are now (same names, sizes and dtype) and rebuilds the inner
  /// optimizer with `make`, carrying over its state (`save` / `load`) and options. Between steps
  /// only; on any error nothing changes.
  void rebind() { rebind_to(binding_.rebound()); }
  void rebind(const named_tensors& tensors) { rebind_to(binding_.rebound(tensors)); }

  /// Writes the flatmin checkpoint (optimizer/checkpoint.hpp: state, step count, CRC) into the
  /// archive as a uint8 tensor "flatmin.checkpoint", with the groups' lr and weight decay and the
  /// base optimizer's (float64 tensors, exact). `torch::save(opt, path)` calls it.
  void save(torch::serialize::OutputArchive& archive) const override {
    std::stringstream bytes;
    {
      const detail::device_scope on(binding_.device());
      const_cast<inner_type&>(*inner_).save(bytes);  // writes nothing to the optimizer; usage_error mid-step
    }
    const std::string s = bytes.str();
    auto t = torch::empty({static_cast<std::int64_t>(s.size())}, torch::kUInt8);
    std::memcpy(t.data_ptr(), s.data(), s.size());
    archive.write("flatmin.checkpoint", t);
    std::vector<double> lr, wd;
    for (const auto& g : param_groups()) {
      const auto& o = static_cast<const group_options&>(g.options());
      lr.push_back(o.lr);
      wd.push_back(o.weight_decay);
    }
    archive.write("flatmin.group_lr", torch::tensor(lr, torch::kDouble));
    archive.write("flatmin.group_weight_decay", torch::tensor(wd, torch::kDouble));
    archive.write("flatmin.base",
                  torch::tensor(std::vector<double>{lr_of(*inner_), wd_of(*inner_)},
                                torch::kDouble));
  }

  /// Restores what save() wrote: all or nothing (std::invalid_argument from the checkpoint's own
  /// checks for another composition, parameter table or a damaged stream; usage_error for an
  /// archive without flatmin's entries or with another number of groups).
  void load(torch::serialize::InputArchive& archive) override {
    torch::Tensor t, lr, wd, base;
    if (!archive.try_read("flatmin.checkpoint", t) || !archive.try_read("flatmin.group_lr", lr) ||
        !archive.try_read("flatmin.group_weight_decay", wd) || !archive.try_read("flatmin.base", base))
      detail::fail("load(): the archive holds no flatmin optimizer (flatmin.* entries missing)");
    if (t.scalar_type() != torch::kUInt8 || lr.scalar_type() != torch::kDouble ||
        wd.scalar_type() != torch::kDouble || base.scalar_type() != torch::kDouble || base.numel() != 2)
      detail::fail("load(): the archive's flatmin entries have unexpected types");
    if (lr.numel() != static_cast<std::int64_t>(param_groups().size()) || wd.numel() != lr.numel())
      detail::fail("load(): the archive has " + std::to_string(lr.numel()) +
                   " param groups, this optimizer " +
                   std::to_string(param_groups().size()));
    t = t.contiguous();
    std::stringstream bytes(
        std::string(static_cast<const char*>(t.data_ptr()), static_cast<std::size_t>(t.numel())));
    {
      const detail::device_scope on(binding_.device());
      inner_->load(bytes);  // all or nothing; from here nothing throws
    }
    lr = lr.contiguous();
    wd = wd.contiguous();
    base = base.contiguous();
    for (std::size_t g = 0; g < param_groups().size(); ++g) {
      auto& o = static_cast<group_options&>(param_groups()[g].options());
      o.lr = lr.data_ptr<double>()[g];
      o.weight_decay = wd.data_ptr<double>()[g];
      applied_[g] = {o.lr, o.weight_decay};
    }
    set_base(*inner_, base.data_ptr<double>()[0], base.data_ptr<double>()[1]);
  }

  inner_type& inner() { return *inner_; }
  const inner_type& inner() const { return *inner_; }
  const binding<T>& bound() const { return binding_; }

 private:
  /// Descent policies whose clean pass needs the objective's saved cotangent (descent::functional).
  static constexpr bool needs_functional_objective = [] {
    if constexpr (requires { inner_type::descent_type::name; })
      return std::string_view(inner_type::descent_type::name) == "functional";
    else
      return false;
  }();

  /// The user's closure with the gradients zeroed before and the binding checked after (the closure
  /// may replace a .grad: its own zero_grad(set_to_none)).
  template <class C>
  struct guarded {
    binding<T>& bound;
    C& closure;
    double operator()() {
      bound.zero_grad();
      const double loss = detail::loss_value(closure());
      bound.check();
      return loss;
    }
  };
  template <class C>
  struct guarded_functional {
    guarded<C>& clean;
    double operator()() { return clean(); }
    void functional_backward() {
      clean.bound.zero_grad();
      clean.closure.functional_backward();
      clean.bound.check();
    }
  };

  static constexpr bool has_weight_decay = requires(inner_type& o) { o.base().weight_decay; };
  /// Whether a group's ρ means something: the optimizer perturbs the bound tensors by a radius ρ.
  static constexpr bool has_rho = requires(inner_type& o) {
    o.perturbation().rho;
    requires inner_type::perturbs && inner_type::perturbs_layout;
  };
  static double lr_of(const inner_type& o) { return o.base().lr; }
  static double rho_of(const inner_type& o) {
    if constexpr (has_rho)
      return o.perturbation().rho;
    else
      return 0.0;
  }
  static double wd_of(const inner_type& o) {
    if constexpr (has_weight_decay)
      return o.base().weight_decay;
    else
      return 0.0;
  }
  static void set_base(inner_type& o, double lr, double wd) {
    o.base().lr = lr;
    if constexpr (has_weight_decay) o.base().weight_decay = wd;
  }

  /// Applies the groups' lr and weight decay (changed by a scheduler or the user since the last
  /// step) to the base optimizer: the same ratio for every group, else usage_error.
  void sync_groups() {
    if (param_groups().size() != applied_.size())
      detail::fail("a param group was added after construction (add_param_group): flatmin's tensors are "
                   "fixed when it is built; build the optimizer with every group");
    bool changed = false;
    for (std::size_t g = 0; g < applied_.size(); ++g) {
      const auto& o = static_cast<const group_options&>(param_groups()[g].options());
      changed = changed || o.lr != applied_[g].first || o.weight_decay != applied_[g].second;
    }
    if (!changed) return;
    // the base values the groups' ratios (fixed at construction) imply, read off a group of ratio
    // 1 (the largest: exact), then every group checked against them
    const auto top = [&](const std::vector<double>& r) {
      return static_cast<std::size_t>(std::max_element(r.begin(), r.end()) - r.begin());
    };
    const auto& lo = static_cast<const group_options&>(param_groups()[top(lr_ratio_)].options());
    const auto& wo = static_cast<const group_options&>(param_groups()[top(wd_ratio_)].options());
    const double lr = lo.lr / lr_ratio_[top(lr_ratio_)];
    const double wd = wd_ratio_[top(wd_ratio_)] > 0 ? wo.weight_decay / wd_ratio_[top(wd_ratio_)] : 0.0;
    const auto off = [](double want, double have) {
      return std::abs(want - have) > 1e-12 * std::max(std::abs(want), std::abs(have));
    };
    for (std::size_t g = 0; g < applied_.size(); ++g) {
      const auto& o = static_cast<const group_options&>(param_groups()[g].options());
      if (off(lr * lr_ratio_[g], o.lr) || off(wd * wd_ratio_[g], o.weight_decay))
        detail::fail("param group " + std::to_string(g) + "'s lr " + flatmin::detail::format_value(o.lr) +
                     " / weight_decay " + flatmin::detail::format_value(o.weight_decay) +
                     " breaks the ratios between groups fixed when the optimizer was built (a schedule "
                     "must scale every group alike)");
    }
    set_base(*inner_, lr, wd);  // validated by the inner optimizer's next call
    for (std::size_t g = 0; g < applied_.size(); ++g) {
      const auto& o = static_cast<const group_options&>(param_groups()[g].options());
      applied_[g] = {o.lr, o.weight_decay};
    }
  }

  void rebind_to(binding<T> fresh) {
    if (inner_->ascended()) detail::fail("rebind() between ascend() and descend(): call cancel() first");
    const detail::device_scope on(fresh.device());
    inner_type next = make_(fresh.params());
    std::stringstream state;
    inner_->save(state);
    next.load(state);
    copy_options(next, *inner_);
    binding_ = std::move(fresh);
    inner_.reset();
    inner_.emplace(std::move(next));
  }

  /// Options changed between steps (a learning-rate or ρ schedule) survive a rebind.
  static void copy_options(inner_type& to, inner_type& from) {
    if constexpr (requires { to.base() = from.base(); }) to.base() = from.base();
    if constexpr (requires { to.perturbation() = from.perturbation(); })
      to.perturbation() = from.perturbation();
    if constexpr (requires { to.mask() = from.mask(); }) to.mask() = from.mask();
    if constexpr (requires { to.schedule() = from.schedule(); }) to.schedule() = from.schedule();
    if constexpr (requires { to.regularizer() = from.regularizer(); }) to.regularizer() = from.regularizer();
    if constexpr (requires { to.descent() = from.descent(); }) to.descent() = from.descent();
    if constexpr (requires { to.options() = from.options(); }) to.options() = from.options();
  }

  binding<T> binding_;
  Make make_;
  std::optional<inner_type> inner_;
  std::vector<double> lr_ratio_, wd_ratio_;             ///< per group, fixed at construction
  std::vector<std::pair<double, double>> applied_;      ///< the groups' (lr, wd) the base runs at
};

template <class T, class Make>
optimizer(binding<T>, Make) -> optimizer<T, Make>;
template <class T, class Make>
optimizer(binding<T>, std::vector<param_group>, Make) -> optimizer<T, Make>;

}  // namespace flatmin::libtorch
