//! Which ONNX operators the frontend lowers, and with which function.

use super::ctx::{Lowering, NodeCtx, B};
use super::{elementwise as ew, nn, quant, reduce, resize, rnn, shape};

/// Lowers one ONNX node.
pub type LowerFn = fn(&mut B, &NodeCtx) -> Lowering;

/// Every ONNX operator (default domain) the frontend accepts. `If` with a
/// constant condition is handled by the lowering loop itself.
pub const LOWERINGS: &[(&str, LowerFn)] = &[
    ("Add", ew::direct_binary),
    ("Sub", ew::direct_binary),
    ("Mul", ew::direct_binary),
    ("Div", ew::direct_binary),
    ("Equal", ew::direct_binary),
    ("Less", ew::direct_binary),
    ("And", ew::direct_binary),
    ("Or", ew::direct_binary),
    ("Pow", ew::pow),
    ("Mod", ew::modulo),
    ("Exp", ew::direct_unary),
    ("Log", ew::direct_unary),
    ("Sqrt", ew::direct_unary),
    ("Erf", ew::direct_unary),
    ("Tanh", ew::direct_unary),
    ("Sigmoid", ew::direct_unary),
    ("Sin", ew::direct_unary),
    ("Cos", ew::direct_unary),
    ("Floor", ew::direct_unary),
    ("Greater", ew::comparison),
    ("GreaterOrEqual", ew::comparison),
    ("LessOrEqual", ew::comparison),
    ("Not", ew::comparison),
    ("Xor", ew::comparison),
    ("Sum", ew::variadic),
    ("Mean", ew::variadic),
    ("Max", ew::variadic),
    ("Min", ew::variadic),
    ("Neg", ew::derived_unary),
    ("Abs", ew::derived_unary),
    ("Reciprocal", ew::derived_unary),
    ("Ceil", ew::derived_unary),
    ("Round", ew::derived_unary),
    ("Tan", ew::derived_unary),
    ("Sign", ew::derived_unary),
    ("IsNaN", ew::derived_unary),
    ("Clip", ew::clip),
    ("Relu", ew::activation),
    ("LeakyRelu", ew::activation),
    ("PRelu", ew::activation),
    ("Elu", ew::activation),
    ("Selu", ew::activation),
    ("HardSigmoid", ew::activation),
    ("HardSwish", ew::activation),
    ("Softplus", ew::activation),
    ("Softsign", ew::activation),
    ("Swish", ew::activation),
    ("Mish", ew::activation),
    ("ThresholdedRelu", ew::activation),
    ("Gelu", ew::activation),
    ("Cast", ew::cast),
    ("CastLike", ew::cast),
    ("Where", ew::where_),
    ("MatMul", nn::matmul),
    ("Gemm", nn::gemm),
    ("Conv", nn::conv),
    ("ConvTranspose", nn::conv_transpose),
    ("BatchNormalization", nn::batch_norm),
    ("LayerNormalization", nn::layer_norm),
    ("InstanceNormalization", nn::instance_norm),
    ("RMSNormalization", nn::rms_norm),
    ("MaxPool", nn::pool),
    ("AveragePool", nn::pool),
    ("GlobalAveragePool", nn::global_pool),
    ("GlobalMaxPool", nn::global_pool),
    ("Softmax", nn::softmax),
    ("LogSoftmax", nn::softmax),
    ("ReduceSum", reduce::reduce),
    ("ReduceMean", reduce::reduce),
    ("ReduceMax", reduce::reduce),
    ("ReduceMin", reduce::reduce),
    ("ReduceL1", reduce::reduce),
    ("ReduceL2", reduce::reduce),
    ("ReduceSumSquare", reduce::reduce),
    ("ReduceLogSum", reduce::reduce),
    ("ReduceLogSumExp", reduce::reduce),
    ("ArgMax", reduce::arg),
    ("ArgMin", reduce::arg),
    ("Shape", shape::shape_of),
    ("Size", shape::shape_of),
    ("Reshape", shape::reshape_node),
    ("Flatten", shape::flatten),
    ("Squeeze", shape::squeeze),
    ("Unsqueeze", shape::squeeze),
    ("Expand", shape::expand),
    ("ConstantOfShape", shape::constant_of_shape),
    ("Constant", shape::constant),
    ("Range", shape::range),
    ("Concat", shape::concat),
    ("Split", shape::split),
    ("Slice", shape::slice),
    ("Gather", shape::gather),
    ("GatherND", shape::gather_nd),
    ("GatherElements", shape::gather_elements),
    ("Transpose", shape::transpose_node),
    ("Tile", shape::tile),
    ("Trilu", shape::trilu),
    ("Pad", shape::pad),
    ("DepthToSpace", shape::depth_space),
    ("SpaceToDepth", shape::depth_space),
    ("Identity", shape::identity),
    ("Dropout", shape::identity),
    ("Resize", resize::resize),
    ("Upsample", resize::resize),
    ("LSTM", rnn::lstm),
    ("GRU", rnn::gru),
    ("RNN", rnn::rnn),
    ("QuantizeLinear", quant::quantize_linear),
    ("DequantizeLinear", quant::dequantize_linear),
    ("DynamicQuantizeLinear", quant::dynamic_quantize_linear),
    ("MatMulInteger", quant::matmul_integer),
    ("ConvInteger", quant::conv_integer),
    ("QLinearMatMul", quant::qlinear_matmul),
    ("QLinearConv", quant::qlinear_conv),
];

/// The operators of onnxruntime's `com.microsoft` domain the frontend
/// accepts: the quantised ones its quantisation tools write.
pub const MICROSOFT_LOWERINGS: &[(&str, LowerFn)] = &[
    ("QuantizeLinear", quant::quantize_linear),
    ("DequantizeLinear", quant::dequantize_linear),
    ("QLinearAdd", quant::qlinear_binary),
    ("QLinearMul", quant::qlinear_binary),
    (
        "QLinearGlobalAveragePool",
        quant::qlinear_global_average_pool,
    ),
    ("QGemm", quant::qgemm),
    ("MatMulNBits", quant::matmul_nbits),
];

/// The lowering of an ONNX operator of `domain` (the default domain is
/// `""` or `ai.onnx`; `com.microsoft` has onnxruntime's quantised ops).
pub fn lowering_for(domain: &str, op_type: &str) -> Option<LowerFn> {
    let table = match domain {
        "" | "ai.onnx" => LOWERINGS,
        "com.microsoft" => MICROSOFT_LOWERINGS,
        _ => return None,
    };
    table
        .iter()
        .find(|(name, _)| *name == op_type)
        .map(|(_, f)| *f)
}

/// True when the frontend can lower `op_type` of `domain`.
pub fn is_supported(domain: &str, op_type: &str) -> bool {
    ((domain.is_empty() || domain == "ai.onnx") && op_type == "If")
        || lowering_for(domain, op_type).is_some()
}
