// CPU kernels of the conv_norms op (fastcae/conv_norms.h): N from the kernel
// and dK from dN, summed once per output channel and (row, column) range of
// taps and copied to the units that share it, in fixed orders whatever the
// thread count; and the layer's epilogue ops around them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "cpu_kernels.h"
#include "fastcae/activate.h"
#include "fastcae/conv_norms.h"

namespace fastcae {

namespace {

ConvAxis axis(at::IntArrayRef input_hw, at::IntArrayRef output_hw, const at::Tensor& weight,
              at::IntArrayRef stride, at::IntArrayRef pad_before, at::IntArrayRef dilation, int64_t a) {
  return {input_hw[a], output_hw[a], weight.size(2 + a), stride[a], pad_before[a], dilation[a]};
}

// Whether tap k of output position i lands inside the input.
inline bool inside(const ConvAxis& a, int64_t i, int64_t k) {
  const int64_t source = i * a.stride - a.pad_before + k * a.dilation;
  return source >= 0 && source < a.input_size;
}

// The taps [first, last) of each output position of one axis that land inside
// the input (a range: the source moves monotonically with the tap), and the
// positions grouped by range: most share the full range, the border ones a few
// others, so N_c is summed once per (row range, column range) and copied out.
struct AxisTaps {
  std::vector<std::pair<int64_t, int64_t>> ranges;  // per distinct range: [first, last)
  std::vector<int64_t> range_of;                    // per output position: its index in ranges

  explicit AxisTaps(const ConvAxis& a) : range_of(a.output_size) {
    for (int64_t i = 0; i < a.output_size; ++i) {
      int64_t first = 0;
      while (first < a.kernel_size && !inside(a, i, first)) ++first;
      int64_t last = first;
      while (last < a.kernel_size && inside(a, i, last)) ++last;
      const std::pair<int64_t, int64_t> range{first, last};
      const auto found = std::find(ranges.begin(), ranges.end(), range);
      range_of[i] = found - ranges.begin();
      if (found == ranges.end()) ranges.push_back(range);
    }
  }
};

// Output channels per task, from a channel's cost (its H_out·W_out outputs plus
// the sums per range, a few cycles each): below ~10^5 of them one thread does
// it all (a fork costs more).
int64_t channels_per_task(int64_t per_channel) {
  constexpr int64_t kWorkPerTask = 1 << 17;
  return std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(per_channel, 1));
}

// One layer as the N kernels see it (the kernel, its sizes, each axis's tap
// ranges), and the kernels.
struct NormsProblem {
  at::Tensor kernel;  // K, contiguous
  int64_t out_channels, group_channels, kernel_w, taps, out_h, out_w, plane;
  AxisTaps row_taps, col_taps;
  int64_t row_ranges, col_ranges;

  NormsProblem(const at::Tensor& weight, at::IntArrayRef input_hw, at::IntArrayRef output_hw,
               at::IntArrayRef stride, at::IntArrayRef pad_before, at::IntArrayRef dilation)
      : NormsProblem(weight.contiguous(), axis(input_hw, output_hw, weight, stride, pad_before, dilation, 0),
                     axis(input_hw, output_hw, weight, stride, pad_before, dilation, 1)) {}

 private:
  NormsProblem(at::Tensor contiguous_kernel, const ConvAxis& rows, const ConvAxis& cols)
      : kernel(std::move(contiguous_kernel)),
        out_channels(kernel.size(0)),
        group_channels(kernel.size(1)),
        kernel_w(cols.kernel_size),
        taps(rows.kernel_size * cols.kernel_size),
        out_h(rows.output_size),
        out_w(cols.output_size),
        plane(rows.output_size * cols.output_size),
        row_taps(rows),
        col_taps(cols),
        row_ranges(static_cast<int64_t>(row_taps.ranges.size())),
        col_ranges(static_cast<int64_t>(col_taps.ranges.size())) {}

 public:
  // N (U,) in z's memory order, in the accumulation dtype.
  at::Tensor unit_norms_sq(bool channels_last) const;
  // dK (weight's shape and dtype) from dN (U,) in z's memory order.
  at::Tensor unit_norms_sq_backward(const at::Tensor& grad_unit_norms_sq, bool channels_last) const;
};

at::Tensor NormsProblem::unit_norms_sq(bool channels_last) const {
  at::Tensor norms =
      at::empty({out_channels * plane}, kernel.options().dtype(at::toOpMathType(kernel.scalar_type())));
  const int64_t per_channel = plane + row_ranges * (out_w + col_ranges * taps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, kernel.scalar_type(), "unit_norms_sq", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* kernel_data = kernel.const_data_ptr<scalar_t>();
    acc_t* norms_data = norms.mutable_data_ptr<acc_t>();
    // range_rows[c][r][j]: N_cij for every row i whose taps are row range r.
    std::vector<acc_t> range_rows(out_channels * row_ranges * out_w);
    at::parallel_for(0, out_channels, channels_per_task(per_channel), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> tap_norms(taps);                       // S_c (kH, kW)
      std::vector<acc_t> range_norms(row_ranges * col_ranges);  // N_c of each (row range, column range)
      for (int64_t c = begin; c < end; ++c) {
        const scalar_t* kernel_c = kernel_data + c * group_channels * taps;
        std::fill(tap_norms.begin(), tap_norms.end(), acc_t(0));
        for (int64_t g = 0; g < group_channels; ++g) {
          for (int64_t t = 0; t < taps; ++t) {
            const acc_t value = static_cast<acc_t>(kernel_c[g * taps + t]);
            tap_norms[t] += value * value;
          }
        }
        for (int64_t r = 0; r < row_ranges; ++r) {
          for (int64_t q = 0; q < col_ranges; ++q) {
            acc_t sum = 0;
            for (int64_t k = row_taps.ranges[r].first; k < row_taps.ranges[r].second; ++k) {
              for (int64_t l = col_taps.ranges[q].first; l < col_taps.ranges[q].second; ++l) {
                sum += tap_norms[k * kernel_w + l];
              }
            }
            range_norms[r * col_ranges + q] = sum;
          }
        }
        for (int64_t r = 0; r < row_ranges; ++r) {
          acc_t* out = range_rows.data() + (c * row_ranges + r) * out_w;
          const acc_t* norms_r = range_norms.data() + r * col_ranges;
          for (int64_t j = 0; j < out_w; ++j) out[j] = norms_r[col_taps.range_of[j]];
        }
        if (!channels_last) {
          for (int64_t i = 0; i < out_h; ++i) {
            const acc_t* row = range_rows.data() + (c * row_ranges + row_taps.range_of[i]) * out_w;
            std::copy(row, row + out_w, norms_data + c * plane + i * out_w);
          }
        }
      }
    });
    if (channels_last) {  // (i, j, c): z's memory order for a channels-last z
      at::parallel_for(0, out_h, rows_per_task(out_w * out_channels), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const acc_t* rows_i = range_rows.data() + row_taps.range_of[i] * out_w;
          for (int64_t j = 0; j < out_w; ++j) {
            acc_t* out = norms_data + (i * out_w + j) * out_channels;
            for (int64_t c = 0; c < out_channels; ++c) out[c] = rows_i[c * row_ranges * out_w + j];
          }
        }
      });
    }
  });
  return norms;
}

at::Tensor NormsProblem::unit_norms_sq_backward(const at::Tensor& grad_unit_norms_sq,
                                                bool channels_last) const {
  const auto acc_type = at::toOpMathType(kernel.scalar_type());
  TORCH_CHECK_VALUE(grad_unit_norms_sq.dim() == 1 && grad_unit_norms_sq.size(0) == out_channels * plane,
                    "fastcae: grad_unit_norms_sq must have shape (", out_channels * plane, ",), got ",
                    grad_unit_norms_sq.sizes());
  TORCH_CHECK_TYPE(grad_unit_norms_sq.scalar_type() == acc_type, "fastcae: grad_unit_norms_sq must be ",
                   acc_type, ", got ", grad_unit_norms_sq.scalar_type());
  const at::Tensor grad_norms = grad_unit_norms_sq.contiguous();
  at::Tensor grad_weight = at::empty_like(kernel);
  const int64_t per_channel = plane + row_ranges * col_ranges * taps;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, kernel.scalar_type(), "unit_norms_sq_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* kernel_data = kernel.const_data_ptr<scalar_t>();
        const acc_t* grad_data = grad_norms.const_data_ptr<acc_t>();
        scalar_t* grad_weight_data = grad_weight.mutable_data_ptr<scalar_t>();
        // range_sums[c][r][j] = Σ_{i with row range r} dN_cij, the rows in order.
        std::vector<acc_t> range_sums(out_channels * row_ranges * out_w, acc_t(0));
        if (channels_last) {  // one pass over dN in its (i, j, c) order
          for (int64_t i = 0; i < out_h; ++i) {
            acc_t* sums_i = range_sums.data() + row_taps.range_of[i] * out_w;
            for (int64_t j = 0; j < out_w; ++j) {
              const acc_t* grad = grad_data + (i * out_w + j) * out_channels;
              for (int64_t c = 0; c < out_channels; ++c) sums_i[c * row_ranges * out_w + j] += grad[c];
            }
          }
        }
        at::parallel_for(0, out_channels, channels_per_task(per_channel), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> range_grads(row_ranges * col_ranges);  // Σ dN_c over each (row, column) range
          std::vector<acc_t> tap_grads(taps);                       // dS_c (kH, kW)
          for (int64_t c = begin; c < end; ++c) {
            acc_t* sums_c = range_sums.data() + c * row_ranges * out_w;
            if (!channels_last) {
              for (int64_t i = 0; i < out_h; ++i) {
                acc_t* sums = sums_c + row_taps.range_of[i] * out_w;
                const acc_t* grad = grad_data + c * plane + i * out_w;
                for (int64_t j = 0; j < out_w; ++j) sums[j] += grad[j];
              }
            }
            std::fill(range_grads.begin(), range_grads.end(), acc_t(0));
            for (int64_t r = 0; r < row_ranges; ++r) {
              for (int64_t j = 0; j < out_w; ++j) {
                range_grads[r * col_ranges + col_taps.range_of[j]] += sums_c[r * out_w + j];
              }
            }
            std::fill(tap_grads.begin(), tap_grads.end(), acc_t(0));
            for (int64_t r = 0; r < row_ranges; ++r) {
              for (int64_t q = 0; q < col_ranges; ++q) {
                const acc_t sum = range_grads[r * col_ranges + q];
                for (int64_t k = row_taps.ranges[r].first; k < row_taps.ranges[r].second; ++k) {
                  for (int64_t l = col_taps.ranges[q].first; l < col_taps.ranges[q].second; ++l) {
                    tap_grads[k * kernel_w + l] += sum;
                  }
                }
              }
            }
            const scalar_t* kernel_c = kernel_data + c * group_channels * taps;
            scalar_t* grad_c = grad_weight_data + c * group_channels * taps;
            for (int64_t g = 0; g < group_channels; ++g) {
              for (int64_t t = 0; t < taps; ++t) {
                grad_c[g * taps + t] =
                    static_cast<scalar_t>(2 * static_cast<acc_t>(kernel_c[g * taps + t]) * tap_grads[t]);
              }
            }
          }
        });
      });
  return grad_weight;
}

// z (B, C, H, W) as (B, U) in its memory order (a view: z is dense in that layout), and back.
at::Tensor units_view(const at::Tensor& t, bool channels_last) {
  const int64_t units = t.size(1) * t.size(2) * t.size(3);
  return channels_last ? t.permute({0, 2, 3, 1}).reshape({t.size(0), units}) : t.reshape({t.size(0), units});
}

at::Tensor from_units(const at::Tensor& flat, const at::Tensor& like, bool channels_last) {
  if (!channels_last) return flat.view(like.sizes());
  return flat.view({like.size(0), like.size(2), like.size(3), like.size(1)}).permute({0, 3, 1, 2});
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> conv2d_activate_inplace_cpu(at::Tensor& preact, const at::Tensor& weight,
                                                               at::IntArrayRef input_hw, at::IntArrayRef stride,
                                                               at::IntArrayRef pad_before, at::IntArrayRef dilation,
                                                               c10::string_view activation, bool channels_last) {
  check_conv_norms_args(weight, input_hw, stride, pad_before, dilation);
  check_conv_activate_inputs(preact, weight, channels_last);
  const NormsProblem problem(weight, input_hw, {preact.size(2), preact.size(3)}, stride, pad_before, dilation);
  const at::Tensor norms = problem.unit_norms_sq(channels_last);
  at::Tensor flat_preact = units_view(preact, channels_last);
  at::Tensor penalty = activate_forward_inplace_cpu(flat_preact, norms, activation);
  // As ATen's in-place ops do (see activate_forward_inplace_cpu): a view made
  // below autograd has its own version counter, so z's is bumped here.
  torch::autograd::impl::bump_version(preact);
  return {penalty, norms};
}

std::tuple<at::Tensor, at::Tensor> conv2d_activate_backward_cpu(
    const c10::optional<at::Tensor>& grad_code, const c10::optional<at::Tensor>& grad_penalty,
    const at::Tensor& code, const at::Tensor& unit_norms_sq, const at::Tensor& weight, at::IntArrayRef input_hw,
    at::IntArrayRef stride, at::IntArrayRef pad_before, at::IntArrayRef dilation, c10::string_view activation,
    bool channels_last, std::array<bool, 2> output_mask) {
  check_conv_norms_args(weight, input_hw, stride, pad_before, dilation);
  check_conv_activate_inputs(code, weight, channels_last);
  if (grad_code.has_value()) {
    TORCH_CHECK_VALUE(grad_code->sizes() == code.sizes(), "fastcae: grad_code must have shape ", code.sizes(),
                      ", got ", grad_code->sizes());
  }
  c10::optional<at::Tensor> flat_grad_code;
  if (grad_code.has_value()) flat_grad_code = units_view(*grad_code, channels_last);  // a copy where not a view
  const auto [flat_grad_preact, grad_norms] = activate_backward_cpu(
      flat_grad_code, grad_penalty, units_view(code, channels_last), unit_norms_sq, activation, output_mask);
  at::Tensor grad_preact, grad_weight;
  if (output_mask[0]) grad_preact = from_units(flat_grad_preact, code, channels_last);
  if (output_mask[1]) {
    const NormsProblem problem(weight, input_hw, {code.size(2), code.size(3)}, stride, pad_before, dilation);
    grad_weight = problem.unit_norms_sq_backward(grad_norms, channels_last);
  }
  return {grad_preact, grad_weight};
}

}  // namespace fastcae
