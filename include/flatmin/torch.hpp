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
/// Scope: float and double tensors on the CPU (host memory, as `backend::eigen` reads it). bf16 /
/// half come with mixed precision; CUDA tensors are refused (`usage_error`): they need
/// `backend::thrust` compiled by nvcc and the current CUDA stream, not bound here yet.
///
/// Safety: torch may free or replace the memory of a parameter or gradient behind flatmin's back
/// (`zero_grad(set_to_none=true)`, `p.mutable_grad() = {}`, `module->to(...)`, `torch::load`, a
/// backward with create_graph). The binding keeps a reference to every storage it registered, so
/// that memory is never freed under flatmin, and `check()` (run by the wrapper before every
/// ascend / descend / step) throws `usage_error` naming the tensor whose storage, size, dtype,
/// device or layout changed. `rebind()` re-points after such a change (same names and sizes).

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "config.hpp"
#include "optimizer/report.hpp"
#include "params/param_set.hpp"

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

inline std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float:
      return "float";
    case c10::ScalarType::Double:
      return "double";
    default:
      return c10::toString(t);
  }
}

inline std::string device_name(const c10::Device& d) { return d.str(); }

[[noreturn]] inline void fail(const std::string& what) { throw usage_error("flatmin::libtorch: " + what); }

template <class T>
constexpr c10::ScalarType scalar_type() {
  if constexpr (std::is_same_v<T, float>)
    return c10::ScalarType::Float;
  else
    return c10::ScalarType::Double;
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
      if (dtype == c10::ScalarType::Float || dtype == c10::ScalarType::Double)
        fail("tensor " + quote(name) + " is " + dtype_name(dtype) + ", this binding is for " +
             dtype_name(scalar_type<T>()) + ": use binding<" + dtype_name(dtype) + ">");
      fail("tensor " + quote(name) + " has dtype " + dtype_name(dtype) +
           ": the adapter binds float and double tensors (bf16 / half: not yet, they need mixed precision)");
    }
  if (tensors.empty()) return;
  const auto& [name, t] = tensors.front();
  if (t.is_cuda())
    fail("tensor " + quote(name) + " is on " + device_name(t.device()) +
         ": CUDA tensors need backend::thrust compiled by nvcc, which this adapter does not bind yet "
         "(backend::eigen reads host memory only)");
  if (!t.device().is_cpu())
    fail("tensor " + quote(name) + " is on " + device_name(t.device()) + ": only CPU tensors can be bound");
}

}  // namespace detail

/// A `param_set<T>` over libtorch tensors that knows what it registered. T is float or double.
///
/// Each tensor must be dense (strided), contiguous, of dtype T and on the CPU; all of one dtype and
/// device. An undefined gradient is allocated (zeros, same dtype and device) and set as `.grad`.
/// Violations throw `usage_error` naming the tensor. The binding holds the storages it registered:
/// copies of it share them; keep one binding per optimizer.
template <class T>
class binding {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "flatmin::libtorch::binding: T must be float or double (bf16 / half: not yet supported)");

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
    return binding(tensors, options_);
  }
  /// Re-points this binding (see rebound()). An optimizer built from the old params() still points
  /// at the old storages: `optimizer::rebind()` rebuilds it.
  void rebind() { *this = rebound(); }

 private:
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

  void build() {
    param_set<T> ps;
    for (const auto& e : entries_) {
      std::vector<std::int64_t> shape = e.param.sizes().vec();
      if (shape.empty()) shape.push_back(1);  // a 0-dim tensor is one value
      ps.add(e.name, e.param.template data_ptr<T>(), e.grad.template data_ptr<T>(), shape, e.options);
    }
    params_ = std::move(ps);
  }

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

/// A flatmin optimizer over a `binding`, in torch::optim's shape. `make(params)` builds the
/// optimizer from a `param_set<T>` (any factory: `flatmin::sam`, `fsam`, `adamw`, ...); it is called
/// again by `rebind()`, which carries the optimizer's state and options over.
///
/// `step(closure)`: the closure runs forward and backward and returns the loss (a one-element
/// tensor or a number). The gradients are zeroed in place before each backward, so the gradient
/// at w cannot leak into the one at w + ε, whether or not the closure zeroes them itself.
template <class T, class Make>
class optimizer {
 public:
  using inner_type = std::invoke_result_t<Make&, const param_set<T>&>;

  optimizer(binding<T> bound, Make make) : binding_(std::move(bound)), make_(std::move(make)) {
    inner_.emplace(make_(binding_.params()));
  }

  /// Zeroes the gradients, calls the closure at w (and at w + ε when the step perturbs), then the
  /// base step. Returns the inner optimizer's report.
  template <class Closure>
  decltype(auto) step(Closure&& closure, const step_args& args = {}) {
    binding_.check();
    auto objective = [&]() -> double {
      binding_.zero_grad();
      double loss = detail::loss_value(closure());
      binding_.check();  // the closure may have replaced a .grad (its own zero_grad(set_to_none))
      return loss;
    };
    return inner_->step(objective, args);
  }

  /// The two-call protocol with the binding checked first. The caller zeroes the gradients
  /// (`zero_grad()`) before each backward.
  decltype(auto) ascend(const step_args& args = {}) {
    binding_.check();
    return inner_->ascend(args);
  }
  /// A stale binding here cancels the step (w restored into the registered memory) and throws.
  decltype(auto) descend(const step_args& args = {}) {
    try {
      binding_.check();
    } catch (...) {
      inner_->cancel();
      throw;
    }
    return inner_->descend(args);
  }
  void cancel() { inner_->cancel(); }

  /// Zeroes the gradients in place (see binding::zero_grad).
  void zero_grad() { binding_.zero_grad(); }

  /// Re-points at the tensors as they are now (same names, sizes and dtype) and rebuilds the inner
  /// optimizer with `make`, carrying over its state (`save` / `load`) and options. Between steps
  /// only; on any error nothing changes.
  void rebind() { rebind_to(binding_.rebound()); }
  void rebind(const named_tensors& tensors) { rebind_to(binding_.rebound(tensors)); }

  inner_type& inner() { return *inner_; }
  const inner_type& inner() const { return *inner_; }
  const binding<T>& bound() const { return binding_; }

 private:
  void rebind_to(binding<T> fresh) {
    if (inner_->ascended()) detail::fail("rebind() between ascend() and descend(): call cancel() first");
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
  }

  binding<T> binding_;
  Make make_;
  std::optional<inner_type> inner_;
};

template <class T, class Make>
optimizer(binding<T>, Make) -> optimizer<T, Make>;

}  // namespace flatmin::libtorch
