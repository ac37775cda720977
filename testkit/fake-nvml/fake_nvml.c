/*
 * A fake libnvidia-ml.so.1 for llmd's tests: machines without an NVIDIA GPU (CI) load it through
 * nvml-wrapper exactly like the real library, and each test decides what it reports.
 *
 * Readings come from the file named by the FAKE_NVML_CONFIG environment variable or, when it is
 * unset, from "fake-nvml.conf" beside the library file itself (so tests running in parallel in one
 * process each load their own copy of the library with their own readings). The file is read by
 * nvmlInit_v2 and again by each nvmlDeviceGetCount_v2 (the start of every sample), so a test can
 * change the readings by replacing the file. One "key value" pair per line; '#' starts a comment.
 * Keys:
 *   init_error N        nvmlInit_v2 returns NVML error code N (e.g. 9 = driver not loaded)
 *   count_delay_ms N    nvmlDeviceGetCount_v2 sleeps N ms (a slow driver)
 *   driver_version S    cuda_version N (e.g. 12040)    count N (number of GPUs, at most 8)
 *   gpuI.FIELD VALUE    per GPU I (0-based); FIELD is the name each getter below looks up:
 *                       name uuid bus_id mem_total mem_used mem_free processes (PID:BYTES,...)
 *                       util_gpu util_mem temp temp_slowdown temp_shutdown fan power_mw
 *                       limit_mw limit_default_mw limit_min_mw limit_max_mw energy_mj clock_sm
 *                       clock_mem throttle pcie_gen pcie_gen_max pcie_width pcie_width_max
 *                       pcie_tx_kib pcie_rx_kib nvlink (LINKS:ACTIVE)
 *   p2p.I.J VALUE       nvmlDeviceGetP2PStatus (read) between GPUs I < J: an nvmlGpuP2PStatus_t
 *   p2p_nvlink.I.J V    the same over NVLink
 * A value "NS" (or a key that is absent) makes the getter return NVML_ERROR_NOT_SUPPORTED; a
 * value "ERR" makes it return NVML_ERROR_UNKNOWN.
 *
 * Build: cc -shared -fPIC -o libnvidia-ml.so.1 fake_nvml.c
 * -DFAKE_NVML_OMIT_ENERGY leaves nvmlDeviceGetTotalEnergyConsumption out of the library, to test
 * a function missing from an older driver.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 8
#define MAX_ENTRIES 512
#define MAX_KEY 64
#define MAX_VALUE 128

/* Struct layouts of nvml.h that the wrapper passes in. */
typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

/* A device handle points at one of these. */
struct fake_device {
    unsigned int index;
};
typedef struct fake_device *nvmlDevice_t;

static struct {
    char key[MAX_KEY];
    char value[MAX_VALUE];
} entries[MAX_ENTRIES];
static int entry_count;
static int initialized;
static struct fake_device devices[MAX_GPUS];

/* The config path: $FAKE_NVML_CONFIG, else fake-nvml.conf in this library's directory. */
static int config_path(char *out, size_t size) {
    const char *env = getenv("FAKE_NVML_CONFIG");
    if (env != NULL) {
        return snprintf(out, size, "%s", env) < (int)size;
    }
    Dl_info info;
    if (dladdr((void *)&config_path, &info) == 0 || info.dli_fname == NULL) {
        return 0;
    }
    const char *slash = strrchr(info.dli_fname, '/');
    int dir_length = slash == NULL ? 1 : (int)(slash - info.dli_fname);
    const char *dir = slash == NULL ? "." : info.dli_fname;
    return snprintf(out, size, "%.*s/fake-nvml.conf", dir_length, dir) < (int)size;
}

static void load_config(void) {
    entry_count = 0;
    char path[4096];
    if (!config_path(path, sizeof path)) {
        return;
    }
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        return;
    }
    char line[MAX_KEY + MAX_VALUE + 8];
    while (fgets(line, sizeof line, file) != NULL && entry_count < MAX_ENTRIES) {
        line[strcspn(line, "\r\n")] = '\0';
        char *key = line + strspn(line, " \t");
        if (*key == '\0' || *key == '#') {
            continue;
        }
        char *space = strpbrk(key, " \t");
        if (space == NULL) {
            continue;
        }
        *space = '\0';
        char *value = space + 1 + strspn(space + 1, " \t");
        snprintf(entries[entry_count].key, MAX_KEY, "%s", key);
        snprintf(entries[entry_count].value, MAX_VALUE, "%s", value);
        entry_count++;
    }
    fclose(file);
}

static const char *lookup(const char *key) {
    for (int i = entry_count - 1; i >= 0; i--) {
        if (strcmp(entries[i].key, key) == 0) {
            return entries[i].value;
        }
    }
    return NULL;
}

/* Looks up "gpuI.field"; returns SUCCESS with the string, or the status the getter reports. */
static nvmlReturn_t gpu_string(nvmlDevice_t device, const char *field, const char **out) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (device == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    char key[MAX_KEY];
    snprintf(key, sizeof key, "gpu%u.%s", device->index, field);
    const char *value = lookup(key);
    if (value == NULL || strcmp(value, "NS") == 0) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    if (strcmp(value, "ERR") == 0) {
        return NVML_ERROR_UNKNOWN;
    }
    *out = value;
    return NVML_SUCCESS;
}

static nvmlReturn_t gpu_u64(nvmlDevice_t device, const char *field, unsigned long long *out) {
    const char *value;
    nvmlReturn_t status = gpu_string(device, field, &value);
    if (status == NVML_SUCCESS) {
        *out = strtoull(value, NULL, 0);
    }
    return status;
}

static nvmlReturn_t gpu_uint(nvmlDevice_t device, const char *field, unsigned int *out) {
    unsigned long long value;
    nvmlReturn_t status = gpu_u64(device, field, &value);
    if (status == NVML_SUCCESS) {
        *out = (unsigned int)value;
    }
    return status;
}

static unsigned int device_count(void) {
    const char *value = lookup("count");
    unsigned int count = value == NULL ? 0 : (unsigned int)strtoul(value, NULL, 0);
    return count > MAX_GPUS ? MAX_GPUS : count;
}

static nvmlReturn_t copy_string(const char *value, char *out, unsigned int length) {
    if (out == NULL || strlen(value) + 1 > length) {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    load_config();
    const char *error = lookup("init_error");
    if (error != NULL) {
        return (nvmlReturn_t)strtol(error, NULL, 0);
    }
    for (unsigned int i = 0; i < MAX_GPUS; i++) {
        devices[i].index = i;
    }
    initialized = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    initialized = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    return result == NVML_SUCCESS ? "Success" : "Fake NVML error";
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    const char *value = lookup("driver_version");
    if (value == NULL) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    return copy_string(value, version, length);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    const char *value = lookup("cuda_version");
    if (value == NULL) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    *version = (int)strtol(value, NULL, 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    /* Each sample starts by counting GPUs: re-read the readings so a test can change them, and
     * stall for "count_delay_ms" to imitate a driver that answers slowly. */
    load_config();
    const char *delay = lookup("count_delay_ms");
    if (delay != NULL) {
        long ms = strtol(delay, NULL, 0);
        struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
    *count = device_count();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (index >= device_count()) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    const char *value;
    nvmlReturn_t status = gpu_string(device, "name", &value);
    return status == NVML_SUCCESS ? copy_string(value, name, length) : status;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    const char *value;
    nvmlReturn_t status = gpu_string(device, "uuid", &value);
    return status == NVML_SUCCESS ? copy_string(value, uuid, length) : status;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    const char *value;
    nvmlReturn_t status = gpu_string(device, "bus_id", &value);
    if (status != NVML_SUCCESS) {
        return status;
    }
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busId, sizeof pci->busId, "%s", value);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%s", value);
    pci->pciDeviceId = 0x220410de;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    unsigned long long total, used, free_bytes;
    nvmlReturn_t status = gpu_u64(device, "mem_total", &total);
    if (status == NVML_SUCCESS) {
        status = gpu_u64(device, "mem_used", &used);
    }
    if (status == NVML_SUCCESS) {
        status = gpu_u64(device, "mem_free", &free_bytes);
    }
    if (status != NVML_SUCCESS) {
        return status;
    }
    memory->total = total;
    memory->reserved = 0;
    memory->used = used;
    memory->free = free_bytes;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    /* "gpuI.processes PID:BYTES,PID:BYTES" */
    const char *value;
    nvmlReturn_t status = gpu_string(device, "processes", &value);
    if (status != NVML_SUCCESS) {
        return status;
    }
    unsigned int found = 0;
    nvmlProcessInfo_t parsed[16];
    const char *cursor = value;
    while (*cursor != '\0' && found < 16) {
        char *end;
        parsed[found].pid = (unsigned int)strtoul(cursor, &end, 10);
        if (*end != ':') {
            return NVML_ERROR_UNKNOWN;
        }
        parsed[found].usedGpuMemory = strtoull(end + 1, &end, 10);
        parsed[found].gpuInstanceId = 0xFFFFFFFF;
        parsed[found].computeInstanceId = 0xFFFFFFFF;
        found++;
        cursor = *end == ',' ? end + 1 : end;
    }
    if (infos == NULL || *count < found) {
        *count = found;
        return found == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
    }
    memcpy(infos, parsed, found * sizeof parsed[0]);
    *count = found;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    nvmlReturn_t status = gpu_uint(device, "util_gpu", &utilization->gpu);
    return status == NVML_SUCCESS ? gpu_uint(device, "util_mem", &utilization->memory) : status;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    return sensor == 0 ? gpu_uint(device, "temp", temp) : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, int threshold,
                                               unsigned int *temp) {
    switch (threshold) {
    case 0:
        return gpu_uint(device, "temp_shutdown", temp);
    case 1:
        return gpu_uint(device, "temp_slowdown", temp);
    default:
        return NVML_ERROR_NOT_SUPPORTED;
    }
}

nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned int fan, unsigned int *speed) {
    return fan == 0 ? gpu_uint(device, "fan", speed) : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *milliwatts) {
    return gpu_uint(device, "power_mw", milliwatts);
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *milliwatts) {
    return gpu_uint(device, "limit_mw", milliwatts);
}

nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device,
                                                      unsigned int *milliwatts) {
    return gpu_uint(device, "limit_default_mw", milliwatts);
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device, unsigned int *min,
                                                          unsigned int *max) {
    nvmlReturn_t status = gpu_uint(device, "limit_min_mw", min);
    return status == NVML_SUCCESS ? gpu_uint(device, "limit_max_mw", max) : status;
}

#ifndef FAKE_NVML_OMIT_ENERGY
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                 unsigned long long *millijoules) {
    return gpu_u64(device, "energy_mj", millijoules);
}
#endif

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int clock, unsigned int *mhz) {
    switch (clock) {
    case 1:
        return gpu_uint(device, "clock_sm", mhz);
    case 2:
        return gpu_uint(device, "clock_mem", mhz);
    default:
        return NVML_ERROR_NOT_SUPPORTED;
    }
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                       unsigned long long *reasons) {
    return gpu_u64(device, "throttle", reasons);
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t device, unsigned int *gen) {
    return gpu_uint(device, "pcie_gen", gen);
}

nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t device, unsigned int *gen) {
    return gpu_uint(device, "pcie_gen_max", gen);
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t device, unsigned int *width) {
    return gpu_uint(device, "pcie_width", width);
}

nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t device, unsigned int *width) {
    return gpu_uint(device, "pcie_width_max", width);
}

nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, int counter, unsigned int *kib) {
    switch (counter) {
    case 0:
        return gpu_uint(device, "pcie_tx_kib", kib);
    case 1:
        return gpu_uint(device, "pcie_rx_kib", kib);
    default:
        return NVML_ERROR_INVALID_ARGUMENT;
    }
}

nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link, int *active) {
    /* "gpuI.nvlink LINKS:ACTIVE": LINKS links exist, the first ACTIVE of them are up. */
    const char *value;
    nvmlReturn_t status = gpu_string(device, "nvlink", &value);
    if (status != NVML_SUCCESS) {
        return status;
    }
    char *end;
    unsigned long links = strtoul(value, &end, 10);
    unsigned long up = *end == ':' ? strtoul(end + 1, NULL, 10) : 0;
    if (link >= links) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *active = link < up ? 1 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetP2PStatus(nvmlDevice_t device1, nvmlDevice_t device2, int index,
                                    int *status) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (device1 == NULL || device2 == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    char key[MAX_KEY];
    unsigned int low = device1->index < device2->index ? device1->index : device2->index;
    unsigned int high = device1->index < device2->index ? device2->index : device1->index;
    /* Index 0 (read) is the general P2P capability; 2 is over NVLink. */
    snprintf(key, sizeof key, index == 2 ? "p2p_nvlink.%u.%u" : "p2p.%u.%u", low, high);
    const char *value = lookup(key);
    if (value == NULL || strcmp(value, "NS") == 0) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    *status = (int)strtol(value, NULL, 0);
    return NVML_SUCCESS;
}
